"""Which registered models a per-model test runs by default: one per group of names that differ only in
numbers (``se_resnet18`` ... ``se_resnet152`` share their code), its first by natural order (the
shallowest). The rest of each group runs under ``-m slow``, which CI also runs, so a new depth of an
existing family costs the default run nothing.

The ResNet-101/152 of each block (``se_resnet101``, ``nl_resnet152``) are left out of the per-model tests
altogether: each is its ResNet-50 sibling's architecture with more blocks per stage, which
``tests/test_resnet.py::test_deep_variants_are_their_resnet50_with_more_blocks`` checks for every one of
them; running the full contract again at 33 or 50 bottlenecks cost most of the slow suite's time."""
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


# timm twins whose parity tests/test_timm_attn2.py owns, at sizes timm accepts (halo and bat need every
# stage map a multiple of their block size); tests/test_timm_attn.py checks the other timm twins.
SK_RESNEST = ["skresnet18", "skresnet34", "skresnext50_32x4d", "resnest14d", "resnest26d", "resnest50d"]
BYOB = ["halonet26t", "sehalonet33ts", "eca_halonext26ts", "lambda_resnet26t", "bat_resnext26ts"]

DEEP = re.compile(r"(?:^|_)resnet(?:101|152)$")


def deep_repeat(name: str) -> bool:
    """A ResNet-101/152 whose ResNet-50 sibling (same name with ``resnet50``) the per-model tests run."""
    return bool(DEEP.search(name))


def resnet50_sibling(name: str) -> str:
    return DEEP.sub(lambda m: m.group(0)[:-3] + "50", name)  # "_resnet152" -> "_resnet50"


def per_model(names: Iterable[str], *, slow_if=lambda name: False, deep: bool = False) -> list:
    """``names`` as parametrize values: representatives plain, the rest (and ``slow_if``) marked slow;
    the deep repeats (:func:`deep_repeat`) left out unless ``deep``."""
    names = [n for n in names if deep or not deep_repeat(n)]
    reps = representatives(names)
    return [n if n in reps and not slow_if(n) else pytest.param(n, marks=pytest.mark.slow) for n in names]
