"""ImageFolder reading with OpenCV, tolerant of bad files, and a resumable epoch-seeded sampler.

A file that cannot be decoded is skipped with a warning: the dataset returns ``None`` for it and
:func:`collate_skip` drops it from the batch and counts it in ``batch["skipped"]``, so one bad JPEG
never stops a run and the count can be reported at epoch end.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["IMG_EXTENSIONS", "find_classes", "ImageFolder", "collate_skip", "EpochSampler", "ResumableLoader"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

cv2.setNumThreads(1)  # decoding runs per sample (and per worker); OpenCV's own pool only oversubscribes


def find_classes(split_dir: str | os.PathLike) -> list[str]:
    """Sorted class folder names of ``split_dir``; raises if it is missing or has none."""
    d = Path(split_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(d)!r} does not exist (expected <root>/<split>/<class>/<image>).")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"Dataset folder {str(d)!r} has no class sub-folders (expected {d}/<class>/<image>).")
    return classes


class ImageFolder(Dataset):
    """``root/<class>/<image>`` read with OpenCV as RGB uint8 and passed through ``transform``.

    Args:
        root: split folder, e.g. ``data/train``.
        classes: class names in label order (default: the sorted folder names).
        transform: ``transform(image=HxWx3 uint8) -> {"image": tensor}`` (an albumentations Compose).

    Items are ``{"image", "target", "index"}``, or ``None`` when the file cannot be decoded.
    """

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None, transform: Callable | None = None):
        self.root = Path(root)
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        for label, c in enumerate(self.classes):
            d = self.root / c
            if not d.is_dir():
                raise FileNotFoundError(f"Class folder {str(d)!r} is missing.")
            files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMG_EXTENSIONS))
            self.samples += [(str(d / f), label) for f in files]
        if not self.samples:
            raise FileNotFoundError(f"No images ({', '.join(IMG_EXTENSIONS)}) under {str(self.root)!r}.")
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        path, target = self.samples[index]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            warnings.warn(f"Skipping undecodable image {path!r}.", stacklevel=2)
            return None
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return {"image": img, "target": target, "index": index}


def collate_skip(items: list[dict | None]) -> dict[str, torch.Tensor]:
    """Stack the decodable items; ``skipped`` counts the ones that were ``None``.

    Returns:
        ``{"image": [B, C, H, W], "target": [B], "index": [B], "skipped": []}`` (B may be 0).
    """
    good = [it for it in items if it is not None]
    skipped = torch.tensor(len(items) - len(good))
    if not good:
        return {"image": torch.empty(0), "target": torch.empty(0, dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long), "skipped": skipped}
    images = [it["image"] for it in good]
    image = torch.stack(images) if isinstance(images[0], torch.Tensor) else torch.from_numpy(np.stack(images))
    return {"image": image, "target": torch.tensor([it["target"] for it in good]),
            "index": torch.tensor([it["index"] for it in good]), "skipped": skipped}


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
