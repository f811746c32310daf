"""Model and block registries: two dicts filled by decorators.

Registering a taken name raises; an unknown name raises a ``ValueError`` that suggests the
closest registered names. Entry points never swallow keyword arguments, so a misspelt one
surfaces as a ``TypeError`` naming it.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

__all__ = [
    "ModelEntry",
    "register_model",
    "register_block",
    "list_models",
    "list_blocks",
    "get_model_entry",
    "get_block",
    "create",
    "create_block",
]


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model name.

    Attributes:
        name: registered name, e.g. ``"cbam_resnet50"``.
        fn: entry point ``fn(**kwargs) -> nn.Module``.
        filter_fn: ``filter_fn(state_dict, model) -> state_dict`` converting foreign checkpoint
            layouts (torchvision, timm, official) into this model's names, or None.
    """

    name: str
    fn: Callable[..., nn.Module]
    filter_fn: Callable[[dict, nn.Module], dict] | None = None


_MODELS: dict[str, ModelEntry] = {}
_BLOCKS: dict[str, type[nn.Module]] = {}


def _unknown(kind: str, name: str, known: dict) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}.{hint} See zoo.list_{kind}s() for all {len(known)} names.")


def register_model(fn: Callable | None = None, *, name: str | None = None, filter_fn: Callable | None = None):
    """Register a model entry point, as ``@register_model`` or ``@register_model(filter_fn=...)``.

    Args:
        fn: the entry point; its ``__name__`` is the registered name unless ``name`` is given.
        name: registered name override.
        filter_fn: checkpoint converter, see :class:`ModelEntry`.
    """

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"Model {key!r} is already registered (by {_MODELS[key].fn.__module__}).")
        _MODELS[key] = ModelEntry(key, f, filter_fn)
        return f

    return wrap(fn) if fn is not None else wrap


def register_block(name: str):
    """Register an attention block class under ``name`` (``@register_block("cbam")``)."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _BLOCKS:
            raise ValueError(f"Block {name!r} is already registered (by {_BLOCKS[name].__module__}).")
        _BLOCKS[name] = cls
        return cls

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching an fnmatch ``pattern`` (``"swin*"``, ``"*resnet50"``).

    Several patterns may be given comma-separated (``"resnet50,vit_*"``).
    """
    pats = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]
    return sorted(n for n in _MODELS if any(fnmatch.fnmatchcase(n, p) for p in pats))


def list_blocks(pattern: str = "*") -> list[str]:
    """Sorted registered block names matching an fnmatch ``pattern``."""
    return sorted(n for n in _BLOCKS if fnmatch.fnmatchcase(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise _unknown("model", name, _MODELS)
    return _MODELS[name]


def get_block(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; raises ``ValueError`` with suggestions if unknown."""
    if name not in _BLOCKS:
        raise _unknown("block", name, _BLOCKS)
    return _BLOCKS[name]


def create_block(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention block ``name`` for ``channels`` channels: NCHW in, same shape out."""
    return get_block(name)(channels, **kwargs)


def create(
    name: str,
    *,
    pretrained: bool | str = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    fast: bool = True,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
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
        **kwargs: architecture overrides for the entry point; unknown ones raise ``TypeError``.
            ``features_only=True`` (with ``out_indices``, default timm's) returns the model wrapped
            by :func:`zoo.models.features.features_only`: ``forward`` gives a list of NCHW maps.

    Returns:
        The model, in train mode as ``nn.Module`` constructors leave it.
    """
    features, out_indices = kwargs.pop("features_only", False), kwargs.pop("out_indices", None)
    if out_indices is not None and not features:
        raise TypeError("out_indices selects feature maps; pass features_only=True with it.")
    entry = get_model_entry(name)
    if pretrained:
        from .weights import load_pretrained, pretrained_kwargs

        kwargs = pretrained_kwargs(name, pretrained, kwargs)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained:
        # What was loaded, re-initialised, adapted or retrofitted, and the catalog entry used.
        model.load_report = load_pretrained(model, pretrained, filter_fn=entry.filter_fn, model_name=name)
    if fast:
        from . import accel

        accel.apply(model)
    if features:
        from .models.features import features_only

        model = features_only(model, out_indices)
    return model
