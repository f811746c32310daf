"""Class swaps: how ``zoo.accel`` turns a plain module into its fast twin and back.

A fast class subclasses the plain one and adds no parameters or buffers, so swapping
``module.__class__`` keeps every tensor, name and ``state_dict`` key, and ``isinstance`` checks
against the plain class still hold. Only exact types are swapped (a user's subclass of
``nn.Linear`` is left alone). Fast classes are module-level, so a fast model pickles.
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["fast_twin", "FAST", "PLAIN"]

FAST: dict[type, tuple[str, type]] = {}  # plain class -> (technique, fast class)
PLAIN: dict[type, type] = {}  # fast class -> plain class


def fast_twin(plain: type[nn.Module], technique: str):
    """Register the decorated class as the fast twin of ``plain`` under ``technique``."""

    def wrap(fast: type[nn.Module]) -> type[nn.Module]:
        if plain in FAST:
            raise ValueError(f"{plain.__qualname__} already has a fast twin ({FAST[plain][1].__qualname__}).")
        if not issubclass(fast, plain):
            raise TypeError(f"{fast.__qualname__} must subclass {plain.__qualname__}.")
        FAST[plain] = (technique, fast)
        PLAIN[fast] = plain
        return fast

    return wrap
