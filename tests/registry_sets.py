"""Which registered models a per-model test runs by default: one per group of names that differ only in
numbers (``se_resnet18`` ... ``se_resnet152`` share their code), its first by natural order (the
shallowest). The rest of each group runs under ``-m slow``, which CI also runs, so every registered
model stays covered and a new depth of an existing family costs the default run nothing."""
from __future__ import annotations

import re
from collections.abc import Iterable

import pytest


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def group(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def representatives(names: Iterable[str]) -> set[str]:
    first: dict[str, str] = {}
    for n in sorted(names, key=natural_key):
        first.setdefault(group(n), n)
    return set(first.values())


def per_model(names: Iterable[str], *, slow_if=lambda name: False) -> list:
    """``names`` as parametrize values: representatives plain, the rest (and ``slow_if``) marked slow."""
    names = list(names)
    reps = representatives(names)
    return [n if n in reps and not slow_if(n) else pytest.param(n, marks=pytest.mark.slow) for n in names]
