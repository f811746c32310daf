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

__all__ = ["resolve_data_config", "data_config_from", "train_transform", "eval_transform", "rand_augment"]

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
_KEYS = ("img_size", "mean", "std", "interpolation", "crop_pct")


def data_config_from(cfg: Mapping) -> dict:
    """The preprocessing keys (``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``) found in
    ``cfg``: a model's ``pretrained_cfg`` (``input_size`` ``(C, H, W)`` becomes ``img_size``) or a data
    config saved in a checkpoint. Other keys are ignored; missing ones are left out."""
    out = {k: cfg[k] for k in _KEYS if k in cfg and cfg[k] is not None}
    if "img_size" not in out and cfg.get("input_size") is not None:
        h, w = tuple(cfg["input_size"])[-2:]
        if h != w:
            raise ValueError(f"input_size {tuple(cfg['input_size'])} is not square; the pipelines crop squares. "
                             "Pass img_size explicitly.")
        out["img_size"] = int(h)
    return out


def resolve_data_config(cfg: Mapping, data_config: Mapping | None = None) -> dict:
    """``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``: ``data_config``'s (the model's
    pretrained preprocessing, see :func:`data_config_from`) where it has them, else ``cfg``'s."""
    out = {k: cfg[k] for k in _KEYS}
    if data_config:
        out.update(data_config_from(data_config))
    out["mean"], out["std"] = tuple(float(v) for v in out["mean"]), tuple(float(v) for v in out["std"])
    if out["interpolation"] not in INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATION)}, got {out['interpolation']!r}.")
    if not (isinstance(out["img_size"], int) and out["img_size"] > 0):
        raise ValueError(f"img_size must be a positive int, got {out['img_size']!r}.")
    if not (0 < float(out["crop_pct"]) <= 1):
        raise ValueError(f"crop_pct must be in (0, 1], got {out['crop_pct']!r}.")
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
