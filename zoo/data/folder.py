"""ImageFolder reading with OpenCV, tolerant of bad files, and a resumable epoch-seeded sampler.

A file that cannot be used (unreadable, undecodable, a truncated JPEG, or more pixels than the limit)
is skipped with a warning: indexing the dataset gives ``None`` for it, the loader a
:class:`SkippedImage`, and :func:`collate_skip` drops it from the batch, counting it in
``batch["skipped"]`` and naming it in ``batch["skipped_items"]``. So one bad JPEG never stops a run,
and the count and the paths can be reported.
"""
from __future__ import annotations

import errno
import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["IMG_EXTENSIONS", "MAX_PIXELS", "find_classes", "ImageFolder", "SkippedImage", "collate_skip",
           "decode_image", "EpochSampler", "ResumableLoader"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# 8192 x 8192: a larger image costs seconds and ~200 MB+ per read and is almost surely not a photo
# meant for a classifier (a 16000 x 16000 scan: 1.5 GB, 6 s). Skipped and counted like a bad file.
MAX_PIXELS = 8192 * 8192

cv2.setNumThreads(1)  # decoding runs per sample (and per worker); OpenCV's own pool only oversubscribes


def find_classes(split_dir: str | os.PathLike) -> list[str]:
    """Sorted class folder names of ``split_dir``; raises if it is missing or has none.

    An entry that is a broken symlink or a symlink loop is not a class; it is named in a warning
    rather than dropped silently.
    """
    d = Path(split_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(d)!r} does not exist (expected <root>/<split>/<class>/<image>).")
    classes = []
    for p in d.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir():
            classes.append(p.name)
        elif p.is_symlink():
            warnings.warn(f"Ignoring {str(p)!r}: a symlink that does not lead to a folder "
                          f"({_link_problem(p)}); it is not used as a class.", stacklevel=2)
    classes.sort()
    if not classes:
        raise FileNotFoundError(f"Dataset folder {str(d)!r} has no class sub-folders (expected {d}/<class>/<image>).")
    return classes


def _link_problem(p: Path) -> str:
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop as RuntimeError
        return "a symlink loop"
    except OSError as e:
        return "a symlink loop" if e.errno == errno.ELOOP else "broken"
    return "not a folder"


class SkippedImage(NamedTuple):
    """An image the loader could not use: its dataset ``index``, ``path`` and ``reason``."""

    index: int
    path: str
    reason: str


def _image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the file header without decoding, or None if unknown."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the limit is ours to apply
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:  # over twice PIL's own limit: say so by a size just above it
        side = math.isqrt(2 * Image.MAX_IMAGE_PIXELS) + 1
        return side, side
    except Exception:  # a format PIL does not know, or a header it cannot parse: let OpenCV decide
        return None


def _jpeg_truncated(data: bytes) -> bool:
    """Whether a JPEG stops before its end-of-image marker (OpenCV 4 decodes the rest as grey).

    A complete file ends with FFD9, possibly followed by padding; a file with other data after its
    image (some cameras append a trailer) is checked by decoding it with PIL, which raises on a
    truncated stream.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    if data.rstrip(b"\x00\xff\r\n ").endswith(b"\xff\xd9"):
        return False
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone turned PIL's check off process-wide: the tail decides
        return True
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return True
    return False


def decode_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> np.ndarray | str:
    """Read an image file as ``[H, W, 3]`` RGB uint8, or return why it cannot be used.

    Args:
        path: the file.
        max_pixels: width x height above which the file is refused before decoding (None: no limit).

    Returns:
        The image, or a short reason (``"undecodable"``, ``"truncated JPEG"``, ``"... pixels over
        the limit ..."``, the OS error) as a string.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if max_pixels is not None:
        size = _image_size(data)
        if size is not None and size[0] * size[1] > max_pixels:
            return (f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels, over the limit of {max_pixels} "
                    "(data.max_image_pixels)")
    if _jpeg_truncated(data):
        return "truncated JPEG"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None or img.size == 0:
        return "undecodable"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageFolder(Dataset):
    """``root/<class>/<image>`` read with OpenCV as RGB uint8 and passed through ``transform``.

    Args:
        root: split folder, e.g. ``data/train``.
        classes: class names in label order (default: the sorted folder names).
        transform: ``transform(image=HxWx3 uint8) -> {"image": tensor}`` (an albumentations Compose).
        max_pixels: images with more pixels are skipped unread (None: no limit).

    Items are ``{"image", "target", "index"}``, or ``None`` when the file cannot be used. A
    ``DataLoader`` (which calls ``__getitems__``) gets a :class:`SkippedImage` instead of ``None``,
    so :func:`collate_skip` can name the file. A class folder without images, or one that is a
    symlink back into the tree, is accepted with a warning (its class is never seen).
    """

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None, transform: Callable | None = None,
                 max_pixels: int | None = MAX_PIXELS):
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive pixel count or None, got {max_pixels}.")
        self.root = Path(root)
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.transform = transform
        self.max_pixels = max_pixels
        self.samples: list[tuple[str, int]] = []
        for label, c in enumerate(self.classes):
            d = self.root / c
            if not d.is_dir():
                raise FileNotFoundError(f"Class folder {str(d)!r} is missing.")
            real, tree = d.resolve(), self.root.resolve()
            if d.is_symlink() and (real == tree or real in tree.parents):
                warnings.warn(f"Class folder {str(d)!r} is a symlink loop (it leads back to {str(real)!r}); "
                              f"class {c!r} gets no images.", stacklevel=2)
                continue
            files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMG_EXTENSIONS))
            if not files:
                warnings.warn(f"Class folder {str(d)!r} has no images ({', '.join(IMG_EXTENSIONS)}); "
                              f"class {c!r} (label {label}) will never be seen here.", stacklevel=2)
            self.samples += [(str(d / f), label) for f in files]
        if not self.samples:
            raise FileNotFoundError(f"No images ({', '.join(IMG_EXTENSIONS)}) under {str(self.root)!r}.")
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> dict | SkippedImage:
        """Item ``index``, or a :class:`SkippedImage` (with a warning) when its file cannot be used."""
        path, target = self.samples[index]
        img = decode_image(path, self.max_pixels)
        if isinstance(img, str):
            warnings.warn(f"Skipping image {path!r}: {img}.", stacklevel=3)
            return SkippedImage(index, path, img)
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return {"image": img, "target": target, "index": index}

    def __getitem__(self, index: int) -> dict | None:
        item = self.load(index)
        return None if isinstance(item, SkippedImage) else item

    def __getitems__(self, indices: list[int]) -> list[dict | SkippedImage]:
        return [self.load(i) for i in indices]


def collate_skip(items: list[dict | SkippedImage | None]) -> dict:
    """Stack the usable items; ``skipped`` counts the others (``None`` or :class:`SkippedImage`).

    Returns:
        ``{"image": [B, C, H, W], "target": [B], "index": [B], "skipped": [], "skipped_items":
        [(path, reason), ...]}`` (B may be 0; ``skipped_items`` lists the SkippedImage ones).
    """
    good = [it for it in items if isinstance(it, dict)]
    skipped = torch.tensor(len(items) - len(good))
    named = [(it.path, it.reason) for it in items if isinstance(it, SkippedImage)]
    if not good:
        return {"image": torch.empty(0), "target": torch.empty(0, dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long), "skipped": skipped, "skipped_items": named}
    images = [it["image"] for it in good]
    image = torch.stack(images) if isinstance(images[0], torch.Tensor) else torch.from_numpy(np.stack(images))
    return {"image": image, "target": torch.tensor([it["target"] for it in good]),
            "index": torch.tensor([it["index"] for it in good]), "skipped": skipped, "skipped_items": named}


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Indices for this rank, shuffled by ``seed + epoch``, so an epoch's order can be replayed.

    Replaces Lightning's ``DistributedSampler`` injection (``use_distributed_sampler=False``) so the
    same object serves one process and DDP. ``skip(n)`` drops the first ``n`` indices of the next
    iteration only: how a run resumed from a mid-epoch checkpoint continues where it stopped.

    Args:
        n: dataset length.
        shuffle: permute each epoch (train) or keep the order (eval).
        seed: base seed shared by all ranks.
        drop_last: drop the tail so every rank gets the same count (train); else pad by wrapping
            around for shuffle, or give ranks uneven strided shards for eval.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False):
        self.n, self.shuffle, self.seed, self.drop_last = n, shuffle, seed, drop_last
        self.rank, self.world = _dist()
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        self._skip = n

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        if self.shuffle:
            return self.n // self.world if self.drop_last else math.ceil(self.n / self.world)
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            per_rank = len(self)
            order = (order * 2)[: per_rank * self.world]  # wrap-around pad (no-op unless uneven)
            order = order[self.rank::self.world]
        else:
            order = list(range(self.rank, self.n, self.world))
        skip, self._skip = self._skip, 0
        return iter(order[skip:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position (epoch, batches yielded) is saved in Lightning checkpoints.

    Lightning calls ``state_dict`` when it checkpoints and ``load_state_dict`` before iterating again,
    so a run resumed from a mid-epoch checkpoint sees exactly the batches it had not yet seen.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self):
        self._yielded, self._resume_at = self._resume_at, 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(self.sampler, EpochSampler):
            return
        done = state["batches"]
        if done >= len(self):  # saved at an epoch end: the next epoch starts fresh
            return
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip(done * self.batch_size)
        self._resume_at = done
