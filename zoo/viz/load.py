"""Loading what ``zoo.viz`` draws: a model from a train.py checkpoint, images from files.

Checkpoints are read by :mod:`zoo.checkpoint` (the reader eval.py and resume use, no code runs);
the ``zoo`` entry that train.py stores (model name, classes, kwargs, preprocessing) rebuilds the model.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ..builder import create
from ..checkpoint import load_checkpoint

__all__ = ["IMAGE_EXTS", "DEFAULT_DATA", "load_model", "list_images", "load_images"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_DATA = {"img_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bicubic", "crop_pct": 1.0}


def load_model(
    model: str | None = None,
    *,
    ckpt_path: str | os.PathLike | None = None,
    pretrained: str | bool | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping | None = None,
    ema: bool = False,
) -> tuple[nn.Module, dict]:
    """Build a model for visualisation, in eval mode.

    Args:
        model: registered name; optional with ``ckpt_path`` (read from it), else required.
        ckpt_path: a train.py (Lightning) checkpoint; its ``zoo`` entry gives name, classes, kwargs.
        pretrained: instead of a checkpoint, anything ``zoo.create(pretrained=...)`` accepts.
        num_classes: classifier size without a checkpoint (default 1000).
        model_kwargs: architecture kwargs without a checkpoint.
        ema: use the checkpoint's EMA weights (an error when the run kept none).

    Returns:
        ``(model, info)``; ``info`` has ``name``, ``class_names`` (or None) and ``data_config``
        (the preprocessing the checkpoint was trained with, or {}).

    Raises:
        ValueError: no model named, ``model`` disagrees with the checkpoint, or the checkpoint is
            unusable (zoo.checkpoint.CheckpointError); FileNotFoundError: no such checkpoint.
    """
    if ckpt_path:
        net, meta = load_checkpoint(ckpt_path, use_ema=ema, model_name=model)
        info = {"name": meta["model_name"], "class_names": meta["class_names"], "data_config": meta["data_config"]}
    else:
        if not model:
            raise ValueError("Name a model (model=<name>) or give a checkpoint (ckpt_path=<file>).")
        net = create(model, pretrained=pretrained or False, num_classes=num_classes or 1000, **dict(model_kwargs or {}))
        info = {"name": model, "class_names": None, "data_config": {}}
    return net.eval(), info


def list_images(path: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The image file itself, or the images under a folder (recursively, sorted), at most ``limit``."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"image={str(p)!r} is neither a file nor a folder.")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTS)}) under {str(p)!r}.")
    return files[:limit] if limit else files


def load_images(files: list[Path], data_config: Mapping, in_chans: int = 3) -> torch.Tensor:
    """Read and preprocess images as evaluation does (zoo.data.eval_transform): ``[B, C, S, S]``."""
    import cv2

    from ..data.transforms import eval_transform

    cfg = {**DEFAULT_DATA, **dict(data_config)}
    tf = eval_transform(cfg["img_size"], cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"])
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"Could not read image {str(f)!r}.")
        out.append(tf(image=cv2.cvtColor(img, cv2.COLOR_BGR2RGB))["image"])
    x = torch.stack(out).float()
    return x[:, :in_chans] if in_chans < x.shape[1] else x
