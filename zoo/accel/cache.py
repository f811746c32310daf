"""The one inference cache of ``zoo.accel``: values derived from parameters, kept while they are unchanged.

Every cached thing in the accelerator (low-precision weight copies, Swin's bias + shift masks, ViT's
resampled position table) is a pure function of some tensors and a key. :func:`cached` stores it
on the module that owns it, stamped with each source tensor's storage pointer, ``_version`` (bumped
by any in-place update: ``load_state_dict``, an optimizer step, ``copy_``), dtype and device, and
a weak reference to it (a replaced parameter misses even if its memory is reused). A stale entry is
rebuilt on the next call.

Caching happens only in inference (module in eval mode, autograd off; constants of the key alone
may opt into every mode) and never under ``torch.compile``: the pointer comparisons would break the graph, and inductor's freezing folds
the same constants itself. Entries live in a plain attribute, not in ``state_dict``; the fast
classes drop them on ``train()`` and ``.to()`` (see :class:`CacheOwner`).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn as nn

__all__ = ["cached", "inference_cacheable", "clear", "CacheOwner"]

_ATTR = "_accel_cache"
MAX_ENTRIES = 32  # a handful of shapes / dtypes per module at most; never grow without bound


def inference_cacheable(module: nn.Module) -> bool:
    """True when a derived value may be served from (or stored in) the cache."""
    return not module.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _stamp(sources: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in sources)


def cached(module: nn.Module, key: Hashable, sources: Sequence[torch.Tensor | None],
           build: Callable[[], object], *, inference_only: bool = True) -> object:
    """``build()``, reused while every tensor in ``sources`` is unchanged.

    Args:
        module: owner of the entry (the cache lives on it).
        key: what distinguishes entries of one module (dtype, geometry, grid ...).
        sources: the tensors the value is computed from (parameters, buffers); None entries allowed.
        build: computes the value; called outside inference mode so a cached tensor can also serve
            later ``no_grad`` calls that are not in inference mode.
        inference_only: False for a value that needs no gradient in any mode (a constant of the
            key alone, ``sources=()``): then it is cached in training too.

    Returns:
        The cached or freshly built value (also when caching is not allowed: then nothing is stored).
    """
    if torch.compiler.is_compiling() or (inference_only and not inference_cacheable(module)):
        return build()
    store = module.__dict__.setdefault(_ATTR, {})
    stamp = _stamp(sources)
    hit = store.get(key)
    if hit is not None and hit[0] == stamp and all(r() is t for r, t in zip(hit[1], sources)):
        return hit[2]
    store.pop(key, None)  # free the stale value before building the new one
    if len(store) >= MAX_ENTRIES:
        store.clear()
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    refs = tuple(weakref.ref(t) if t is not None else (lambda: None) for t in sources)
    store[key] = (stamp, refs, value)
    return value


def clear(module: nn.Module) -> None:
    """Drop every entry the module holds."""
    module.__dict__.pop(_ATTR, None)


class CacheOwner:
    """Mixin for fast classes: drop the cache on ``train()``, ``.to()``-like moves, ``copy.deepcopy``
    and pickling (both go through ``__getstate__``)."""

    def train(self, mode: bool = True):
        if mode:  # nothing is cached in training: don't hold the memory
            clear(self)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        clear(self)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(_ATTR, None)
        return state
