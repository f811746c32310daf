"""Building a registered model: entry point -> model, with its pretrained config resolved once.

The registry (:mod:`zoo.registry`) only maps names to entry points; this module sits above it and
above :mod:`zoo.weights`, so neither needs the other. ``create`` looks the ``pretrained=`` value up
in the catalog once, builds the model, attaches ``model.pretrained_cfg`` (what the weights expect:
input size, mean/std, crop, interpolation, and the classifier's module name), then loads the weights.
The data layer takes its preprocessing from that config (or :func:`resolve_pretrained_cfg`), never
from the catalog itself.
"""
from __future__ import annotations

import os

import torch.nn as nn

from . import accel
from .models.features import features_only as wrap_features
from .registry import get_model_entry
from .weights.catalog import find_entry
from .weights.loading import WeightSource, classifier_name, find_source, kwargs_for_entry, load_file_into

__all__ = ["create", "resolve_pretrained_cfg", "default_cfg", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _entry_cfg(cfg) -> dict:
    """The preprocessing of a catalog entry (zoo.weights.catalog.PretrainedCfg)."""
    return {"input_size": tuple(cfg.input_size), "mean": tuple(cfg.mean), "std": tuple(cfg.std),
            "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct}


def default_cfg(model: nn.Module, name: str, in_chans: int = 3) -> dict:
    """Preprocessing for a model without catalogued weights: its native input size, ImageNet
    mean/std, crop_pct 0.875, bicubic.

    The native size is the model's ``img_size`` when it has one (ResNet, ViT), else the input size
    of the architecture's default catalog entry (Swin v2: 256), else 224.
    """
    size = getattr(model, "img_size", None)
    if size is None:
        entry = find_entry(name)
        size = tuple(entry.input_size[1:]) if entry is not None else 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return {"input_size": (in_chans, int(h), int(w)), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "interpolation": "bicubic", "crop_pct": 0.875}


def resolve_pretrained_cfg(name: str, pretrained: bool | str | os.PathLike | None = False) -> dict | None:
    """The preprocessing ``create(name, pretrained=pretrained)`` attaches from the catalog, without
    building the model; None when ``pretrained`` is falsy or names no catalog entry (a local file, an
    uncatalogued URL): then the data config's own settings apply.

    For a datamodule built before the model (it tells the model its class count):
    ``ImageFolderDataModule(..., data_config=resolve_pretrained_cfg(name, pretrained))``.

    Raises:
        ValueError: unknown model name, unknown tag, or no weights for ``pretrained=True``.
    """
    get_model_entry(name)
    if not pretrained:
        return None
    src = find_source(pretrained, name)
    return _entry_cfg(src.cfg) if src.cfg is not None else None


def _pretrained_cfg(model: nn.Module, name: str, num_classes: int, in_chans: int, src: WeightSource | None) -> dict:
    entry = src.cfg if src is not None else None
    data = _entry_cfg(entry) if entry is not None else default_cfg(model, name, in_chans)
    if entry is not None:
        data["input_size"] = (in_chans, *data["input_size"][1:])
    return {
        "architecture": name,
        "entry": entry.name if entry is not None else None,  # catalog key of the loaded weights
        "source": (src.path or src.url) if src is not None else None,
        **data,
        "num_classes": num_classes,
        "classifier": classifier_name(model),
    }


def create(
    name: str,
    *,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    fast: bool = True,
    features_only: bool = False,
    out_indices=None,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`zoo.list_models`.
        pretrained: False; True for the default catalog tag (``zoo.list_pretrained(name)``); a tag
            (``"tv2_in1k"``) or catalog key (``"resnet50.tv2_in1k"``, also of the plain backbone of an
            attention variant: its blocks are retrofitted as the identity); a URL; or a local
            ``.pth``/``.pt``/``.bin``/``.safetensors`` path in torchvision, timm, official or zoo layout.
            Downloads are cached and hash-checked (zoo.weights.download).
        num_classes: classifier outputs; 0 gives pooled features from ``forward``.
        in_chans: input image channels.
        fast: apply ``zoo.accel`` (cached low-precision weights, fused linears, channels-last
            CNNs, Swin's mask cache and CPU training attention); False gives the plain model, as
            ``zoo.accel.undo(model)`` does later.
        features_only: return the model wrapped by :func:`zoo.models.features.features_only`, whose
            ``forward`` gives a list of NCHW feature maps (timm's ``features_only``).
        out_indices: with ``features_only``, the maps to return (default: timm's for the family).
        **kwargs: architecture overrides for the entry point; unknown ones raise ``TypeError``.

    Returns:
        The model, in train mode as ``nn.Module`` constructors leave it, with ``model.pretrained_cfg``
        (a dict: ``architecture``, ``entry`` and ``source`` of the weights or None, ``input_size``
        ``(C, H, W)``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``num_classes``,
        ``classifier`` (module name)) and, when weights were loaded, ``model.load_report``.
    """
    if out_indices is not None and not features_only:
        raise TypeError("out_indices selects feature maps; pass features_only=True with it.")
    entry = get_model_entry(name)
    src = find_source(pretrained, name) if pretrained else None  # the one catalog lookup
    if src is not None:
        kwargs = kwargs_for_entry(src.cfg, kwargs)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
    # Attached before loading: the loader reads the classifier's name from it.
    model.pretrained_cfg = _pretrained_cfg(model, name, num_classes, in_chans, src)
    if src is not None:
        # What was loaded, re-initialised, adapted or retrofitted, and the catalog entry used.
        model.load_report = load_file_into(model, src.fetch(), cfg=src.cfg, filter_fn=entry.filter_fn, model_name=name)
    if fast:
        accel.apply(model)
    if features_only:
        model = wrap_features(model, out_indices)
    return model
