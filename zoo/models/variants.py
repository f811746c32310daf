"""Registered variants as data: every model name is its class over one architecture dict.

A family module lists ``name -> architecture kwargs`` and calls :func:`register_variants` once, which
registers each name and, for each attention block it is given, the ``<block>_<name>`` variant
(``se_resnet50``, ``cbam_mobilenet_v2``). Entry points are ``functools.partial`` objects carrying the
family module's name (``zoo.train`` and the tests read a model's family from ``fn.__module__``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import torch.nn as nn

from ..registry import register_model

__all__ = ["model_entry", "register_variants"]


def _build(cls: Callable[..., nn.Module], arch: dict, **kwargs) -> nn.Module:
    return cls(**{**arch, **kwargs})  # the caller's kwargs win


def model_entry(name: str, cls: Callable[..., nn.Module], arch: dict, *, module: str, doc: str):
    """The entry point ``fn(**kwargs) = cls(**{**arch, **kwargs})``, named ``name``.

    Args:
        name: registered name (the entry's ``__name__``).
        cls: model class, or any callable taking the architecture as keyword arguments.
        arch: the variant's keyword arguments; the caller's override them.
        module: the registering family module's ``__name__`` (the entry's ``__module__``).
        doc: docstring template, formatted with ``name`` and ``arch``.
    """
    fn = functools.partial(_build, cls, arch)
    fn.__name__, fn.__module__ = name, module  # the registry reads these
    fn.__doc__ = doc.format(name=name, arch=arch)
    return fn


def register_variants(cls: Callable[..., nn.Module], archs: Mapping[str, dict], attns: Iterable[str] = (), *,
                      module: str, doc: str, filter_fn: Callable | None = None,
                      extra: Callable[[str, dict], dict] | None = None) -> None:
    """Register every ``archs`` row as a model, each followed by its ``f"{attn}_{name}"`` variants.

    Args:
        cls, module, doc: as :func:`model_entry`.
        archs: ``name -> architecture kwargs``.
        attns: attention block names; variant ``f"{attn}_{name}"`` is ``{**arch, "attn": attn,
            **extra(attn, arch)}``.
        filter_fn: checkpoint converter registered with every name (see ``zoo.registry``).
        extra: per-variant defaults that the block needs on this architecture, or None.
    """
    attns = tuple(attns)
    for name, arch in archs.items():
        register_model(model_entry(name, cls, arch, module=module, doc=doc), filter_fn=filter_fn)
        for attn in attns:
            variant = {**arch, "attn": attn, **(extra(attn, arch) if extra else {})}
            register_model(model_entry(f"{attn}_{name}", cls, variant, module=module, doc=doc), filter_fn=filter_fn)
