"""Model and block registries: two dicts filled by decorators, names -> entry points and block classes.

Registering a taken name raises; an unknown name raises a ``ValueError`` that suggests the
closest registered names. Entry points never swallow keyword arguments, so a misspelt one
surfaces as a ``TypeError`` naming it.

This module imports no model and no weights code: building a model (weights, pretrained config)
is :mod:`zoo.builder`'s job, which sits above both the registry and :mod:`zoo.weights`.
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

