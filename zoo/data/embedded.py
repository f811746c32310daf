"""Small real datasets shipped with scikit-learn, written out as ImageFolder trees.

``digits``: the 1,797 8x8 handwritten digits of ``sklearn.datasets.load_digits`` (UCI optdigits),
upscaled to 32 px PNGs. ``cluttered_digits``: each digit (24 px) at a random place on a 64x64 canvas
among clutter patches cut from other digits, with the digit's box in ``<split>/boxes.csv`` so that
attention maps can be scored by the mass they put inside it; ``cluttered_digits_x8`` places every
training digit 8 times (same validation split). Both are written once into the cache
(``$ZOO_DATA`` or ``$XDG_CACHE_HOME/zoo/data``), atomically: built in a temporary folder, then renamed.
"""
from __future__ import annotations

import csv
import functools
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

__all__ = ["cache_dir", "ensure_embedded", "EMBEDDED", "read_boxes"]

_VAL_FRACTION = 0.2
_SEED = 0


def cache_dir() -> Path:
    """Where embedded datasets live: ``$ZOO_DATA``, else ``$XDG_CACHE_HOME/zoo/data`` (``~/.cache``)."""
    if os.environ.get("ZOO_DATA"):
        return Path(os.environ["ZOO_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "zoo" / "data"


def _split(n: int, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of validation samples: a fixed-seed stratified 20 % per class."""
    rng = np.random.default_rng(_SEED)
    val = np.zeros(n, dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        val[rng.permutation(idx)[: round(len(idx) * _VAL_FRACTION)]] = True
    return val


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # N, 8, 8 in 0..16 -> 0..255
    return images, d.target.astype(np.int64)


def _write_digits(out: Path) -> None:
    images, labels = _digits()
    val = _split(len(labels), labels)
    for i, (img, y) in enumerate(zip(images, labels)):
        split = "val" if val[i] else "train"
        big = cv2.resize(img, (32, 32), interpolation=cv2.INTER_CUBIC)
        d = out / split / str(y)
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:04d}.png"), big)


def _place(rng, canvas_img: np.ndarray, big: np.ndarray, i: int, n_clutter: int, patch: int) -> tuple[int, int]:
    """Draw ``n_clutter`` patches of random other digits, then digit ``i`` on top; returns its (y0, x0)."""
    canvas, digit = canvas_img.shape[0], big.shape[1]
    for _ in range(n_clutter):  # patches of other digits, so the class is only in the box
        src = big[rng.integers(len(big))]
        sy, sx = rng.integers(0, digit - patch, size=2)
        ty, tx = rng.integers(0, canvas - patch, size=2)
        canvas_img[ty:ty + patch, tx:tx + patch] = np.maximum(canvas_img[ty:ty + patch, tx:tx + patch],
                                                              src[sy:sy + patch, sx:sx + patch])
    y0, x0 = rng.integers(0, canvas - digit, size=2)
    canvas_img[y0:y0 + digit, x0:x0 + digit] = np.maximum(canvas_img[y0:y0 + digit, x0:x0 + digit], big[i])
    return int(y0), int(x0)


def _write_cluttered(out: Path, canvas: int = 64, digit: int = 24, n_clutter: int = 4, patch: int = 8,
                     train_copies: int = 1) -> None:
    """Each training digit is placed ``train_copies`` times (new place, new clutter): transformers
    need more than 1,437 images to learn where to look. Validation does not depend on
    ``train_copies`` (its own random stream), so every variant is scored on the same 359 images."""
    images, labels = _digits()
    val = _split(len(labels), labels)
    big = np.stack([cv2.resize(im, (digit, digit), interpolation=cv2.INTER_CUBIC) for im in images])
    for split, copies, seed in (("val", 1, _SEED + 1), ("train", train_copies, _SEED + 2)):
        rng = np.random.default_rng(seed)
        rows = []
        for c in range(copies):
            for i in np.flatnonzero(val == (split == "val")):
                y = int(labels[i])
                img = np.zeros((canvas, canvas), np.uint8)
                y0, x0 = _place(rng, img, big, i, n_clutter, patch)
                rel = Path(str(y)) / (f"{i:04d}.png" if c == 0 else f"{i:04d}-{c}.png")
                (out / split / rel.parent).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out / split / rel), img)
                rows.append((rel.as_posix(), y, x0, y0, x0 + digit, y0 + digit))
        with open(out / split / "boxes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "x0", "y0", "x1", "y1"])
            w.writerows(rows)


# name -> (folder name with a format version, writer). Bump the version when the writer changes.
EMBEDDED = {
    "digits": ("digits-v1", _write_digits),
    "cluttered_digits": ("cluttered_digits-v2", _write_cluttered),
    # Same validation images; 8 placements of every training digit (11,504 images).
    "cluttered_digits_x8": ("cluttered_digits_x8-v2", functools.partial(_write_cluttered, train_copies=8)),
}


def ensure_embedded(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return the ImageFolder root of embedded dataset ``name``, writing it on first use.

    Safe when several processes race: each builds in its own temporary folder and renames it into
    place; the loser's rename fails and its copy is discarded.

    Args:
        name: a key of :data:`EMBEDDED` (``"digits"``, ``"cluttered_digits"``, ``"cluttered_digits_x8"``).
        root: cache folder; default :func:`cache_dir`.

    Returns:
        Folder holding ``train/<class>/*.png`` and ``val/<class>/*.png``.
    """
    if name not in EMBEDDED:
        raise ValueError(f"Unknown embedded dataset {name!r}; choose from {sorted(EMBEDDED)}.")
    folder, writer = EMBEDDED[name]
    base = Path(root).expanduser() if root else cache_dir()
    final = base / folder
    if (final / "val").is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=base))
    try:
        writer(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "val").is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_boxes(root: str | os.PathLike, split: str = "val") -> dict[str, tuple[int, int, int, int]]:
    """Digit boxes of ``cluttered_digits``: ``{"<class>/<file>.png": (x0, y0, x1, y1)}`` in pixels."""
    with open(Path(root) / split / "boxes.csv", newline="") as f:
        return {r["path"]: (int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"])) for r in csv.DictReader(f)}
