"""Albumentations pipelines for training and evaluation, and where their settings come from.

Train: RandomResizedCrop -> optional HorizontalFlip -> ColorJitter and/or RandAugment-style ops ->
Normalize -> ToTensorV2. Eval: resize the shorter side to ``img_size / crop_pct`` -> CenterCrop ->
Normalize -> ToTensorV2 (the timm / torchvision evaluation protocol).
"""
from __future__ import annotations

from collections.abc import Mapping

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

__all__ = ["resolve_data_config", "pretrained_data_config", "train_transform", "eval_transform", "rand_augment"]

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
_KEYS = ("img_size", "mean", "std", "interpolation", "crop_pct")


def pretrained_data_config(model_name: str | None, pretrained: str | bool | None = None) -> dict | None:
    """Preprocessing that a catalogued pretrained weight was trained with, or None.

    ``pretrained`` is what ``zoo.create`` takes: True (the architecture's default tag), a tag, an
    ``arch.tag`` key or a catalogued URL. Local paths and unknown URLs have no entry: None.
    """
    from ..weights.catalog import entry_for

    entry = entry_for(model_name, pretrained) if model_name else None
    if entry is None:
        return None
    return {"img_size": entry.input_size[-1], "mean": entry.mean, "std": entry.std,
            "interpolation": entry.interpolation, "crop_pct": entry.crop_pct}


def resolve_data_config(model_name: str | None, cfg: Mapping, pretrained: str | None = None) -> dict:
    """``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``: the pretrained entry's, else ``cfg``'s."""
    out = {k: cfg[k] for k in _KEYS}
    entry = pretrained_data_config(model_name, pretrained) if pretrained else None
    if entry:
        out.update({k: entry[k] for k in _KEYS if k in entry})
    out["mean"], out["std"] = tuple(float(v) for v in out["mean"]), tuple(float(v) for v in out["std"])
    if out["interpolation"] not in INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATION)}, got {out['interpolation']!r}.")
    return out


def rand_augment(num_ops: int = 2, magnitude: float = 9, magnitude_std: float = 0.5, fill: int = 128) -> A.SomeOf:
    """RandAugment-style ``rand-m{magnitude}-mstd{magnitude_std}`` from albumentations ops.

    ``num_ops`` ops are drawn per image; each samples its strength uniformly up to the level
    ``magnitude + 2 * magnitude_std`` (of 10), which stands in for timm's per-op Gaussian noise on the
    magnitude. Signed ops (rotate, shear, translate) take both signs, as in the paper.
    """
    m = min(max(magnitude + 2 * magnitude_std, 0.0), 10.0) / 10.0
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), fill=fill, p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, fill=fill, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, fill=fill, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, fill=fill, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, fill=fill, p=1.0),
        A.ColorJitter(brightness=0.9 * m, contrast=0, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0.9 * m, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
        A.Sharpen(alpha=(0.0, 0.9 * m), lightness=(1.0, 1.0), p=1.0),
        A.Posterize(num_bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
        A.InvertImg(p=1.0),
    ]
    return A.SomeOf(ops, n=num_ops, replace=True, p=1.0)


def _tail(mean, std) -> list:
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def train_transform(
    img_size: int,
    mean,
    std,
    interpolation: str = "bicubic",
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float | None = 0.4,
    randaugment: Mapping | None = None,
) -> A.Compose:
    """Training pipeline; ``randaugment`` is ``{num_ops, magnitude, magnitude_std}`` or None."""
    ops = [A.RandomResizedCrop(size=(img_size, img_size), scale=tuple(scale), ratio=tuple(ratio),
                               interpolation=INTERPOLATION[interpolation])]
    if hflip:
        ops.append(A.HorizontalFlip(p=hflip))
    if randaugment:
        ops.append(rand_augment(**randaugment))
    elif color_jitter:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0, p=0.8))
    return A.Compose(ops + _tail(mean, std))


def eval_transform(img_size: int, mean, std, interpolation: str = "bicubic", crop_pct: float = 0.875) -> A.Compose:
    """Evaluation pipeline: shorter side to ``img_size / crop_pct``, centre crop ``img_size``."""
    resize = int(img_size / crop_pct + 0.5) if crop_pct < 1 else img_size
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=INTERPOLATION[interpolation]),
        A.CenterCrop(height=img_size, width=img_size),
        *_tail(mean, std),
    ])
