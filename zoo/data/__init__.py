"""Data: ImageFolder datamodule, albumentations pipelines, embedded scikit-learn digits datasets."""
from .datamodule import ImageFolderDataModule, check_splits
from .embedded import cache_dir, ensure_embedded, read_boxes
from .folder import EpochSampler, ImageFolder, ResumableLoader, collate_skip, find_classes
from .transforms import (
    data_config_from,
    eval_transform,
    rand_augment,
    resolve_data_config,
    train_transform,
)

__all__ = [
    "ImageFolderDataModule",
    "check_splits",
    "cache_dir",
    "ensure_embedded",
    "read_boxes",
    "EpochSampler",
    "ImageFolder",
    "ResumableLoader",
    "collate_skip",
    "find_classes",
    "data_config_from",
    "eval_transform",
    "rand_augment",
    "resolve_data_config",
    "train_transform",
]
