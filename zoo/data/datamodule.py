"""The one LightningDataModule: an ImageFolder tree (``root/train/<class>``, ``root/val/<class>``).

``embedded="digits"`` or ``"cluttered_digits"`` writes the scikit-learn digits into the cache on
first use and reads them through the same code as any other folder.
"""
from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from .embedded import EMBEDDED, ensure_embedded
from .folder import MAX_PIXELS, EpochSampler, ImageFolder, ResumableLoader, collate_skip, find_classes
from .transforms import eval_transform, resolve_data_config, train_transform

__all__ = ["ImageFolderDataModule", "check_splits"]


def check_splits(root, train_split: str = "train", val_split: str = "val") -> list[str]:
    """Class names shared by both splits; raises before any training if the tree is unusable."""
    from pathlib import Path

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset root {str(root)!r} does not exist. Expected {root}/{train_split}/<class>/*.")
    train, val = find_classes(root / train_split), find_classes(root / val_split)
    if train != val:
        only_t, only_v = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise ValueError(
            f"Class folders differ between {train_split!r} and {val_split!r} under {str(root)!r}: "
            f"only in {train_split}: {only_t or '-'}; only in {val_split}: {only_v or '-'}."
        )
    return train


class ImageFolderDataModule(L.LightningDataModule):
    """Train / val loaders over an ImageFolder tree with albumentations pipelines.

    Args:
        root: dataset folder; None with ``embedded`` set uses the cache.
        embedded: a key of ``zoo.data.embedded.EMBEDDED`` or None.
        img_size, mean, std, interpolation, crop_pct: preprocessing, where ``data_config`` has none.
        batch_size: per process.
        num_workers: loader processes (0 decodes in the training process).
        train_aug: keyword arguments of :func:`zoo.data.transforms.train_transform`.
        seed: base seed of the per-epoch shuffle.
        data_config: the preprocessing the model's weights expect, overriding the settings above:
            ``model.pretrained_cfg``, :func:`zoo.resolve_pretrained_cfg` (when the datamodule is built
            before the model), or a checkpoint's saved data config. None: the settings above.
        max_image_pixels: images with more pixels (width x height) are skipped unread and counted,
            like an undecodable file; None for no limit.
    """

    def __init__(
        self,
        root: str | None = None,
        embedded: str | None = None,
        *,
        img_size: int = 224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_aug: Mapping | None = None,
        train_split: str = "train",
        val_split: str = "val",
        seed: int = 0,
        data_config: Mapping | None = None,
        max_image_pixels: int | None = MAX_PIXELS,
    ):
        super().__init__()
        if root is None and embedded is None:
            raise ValueError(f"Give data.root (an ImageFolder tree) or data.embedded ({', '.join(EMBEDDED)}).")
        self.root, self.embedded = root, embedded
        self.data_config = resolve_data_config(
            dict(img_size=img_size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct),
            data_config,
        )
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_aug = dict(train_aug or {})
        self.splits = (train_split, val_split)
        self.seed = seed
        self.max_image_pixels = max_image_pixels
        self.classes: list[str] | None = None
        self.train_set = self.val_set = None

    def prepare_data(self) -> None:
        if self.embedded:
            self.root = str(ensure_embedded(self.embedded))

    def setup(self, stage: str | None = None) -> None:
        if self.classes is not None:
            return
        if self.embedded:  # every DDP rank resolves the cache path (prepare_data ran on rank 0 only)
            self.root = str(ensure_embedded(self.embedded))
        self.classes = check_splits(self.root, *self.splits)
        dc = self.data_config
        tail = dict(img_size=dc["img_size"], mean=dc["mean"], std=dc["std"], interpolation=dc["interpolation"])
        self.train_set = ImageFolder(f"{self.root}/{self.splits[0]}", self.classes,
                                     train_transform(**tail, **self.train_aug), max_pixels=self.max_image_pixels)
        self.val_set = ImageFolder(f"{self.root}/{self.splits[1]}", self.classes,
                                   eval_transform(**tail, crop_pct=dc["crop_pct"]), max_pixels=self.max_image_pixels)

    @property
    def num_classes(self) -> int:
        if self.classes is None:
            self.setup()
        return len(self.classes)

    def _loader(self, dataset, *, train: bool) -> ResumableLoader:
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.seed, drop_last=train)
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_skip,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=train,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> ResumableLoader:
        return self.val_dataloader()
