"""Small pieces shared by blocks and models: channel rounding, stochastic depth, input checks and the
transformer MLP. Plain PyTorch only: the speedups are applied from outside by ``zoo.accel``."""
from __future__ import annotations

import numbers

import torch
import torch.nn as nn

__all__ = ["make_divisible", "DropPath", "check_image_input", "check_int", "check_rate", "check_positive", "Mlp", "reduced_channels"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below ``round_limit * v``.

    The same rounding timm and torchvision use for reduced channel counts, so parameter counts
    match theirs.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, only in training.

    Args:
        p: probability of dropping a sample's branch.

    Shapes: any ``[B, ...]`` in, same out.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int | tuple[int, int], model: str) -> None:
    """Raise a ``ValueError`` naming the expected shape when ``x`` cannot go through ``model``.

    Args:
        x: the input, expected ``[B, in_chans, H, W]``.
        in_chans: channels the model was built for.
        min_size: smallest H and W the model accepts (int or ``(h, w)``).
        model: the model's name for the message.
    """
    mh, mw = (min_size, min_size) if isinstance(min_size, int) else min_size
    if x.ndim != 4 or x.shape[1] != in_chans or x.shape[2] < mh or x.shape[3] < mw:
        raise ValueError(
            f"{model} expects input [B, {in_chans}, H, W] with H >= {mh} and W >= {mw}; "
            f"got {list(x.shape)}."
        )


def _ints(value) -> list | None:
    """The integers of an int or a sequence of ints (Hydra's ListConfig too); None if not integers."""
    items = [value] if isinstance(value, (int, float, str, bool)) or value is None else list(value)
    if not items or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        return None
    return items


def check_int(owner: str, name: str, value, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` (an int, or a sequence of them) is at least ``minimum``.

    Constructors call this first, so a bad size fails where it was given, naming the argument, the
    value and the valid range, instead of deep in the first forward.
    """
    items = _ints(value)
    if items is None or min(items) < minimum:
        what = "an integer" if isinstance(value, (int, float, str, bool)) or value is None else "integers"
        raise ValueError(f"{owner}: {name} must be {what} >= {minimum}, got {value!r}.")


def check_odd(owner: str, name: str, value, minimum: int = 1) -> None:
    """``check_int``, then raise ``ValueError`` unless every kernel size in ``value`` is odd
    ("same" padding of ``k // 2`` only keeps a map centred for an odd ``k``)."""
    check_int(owner, name, value, minimum)
    if any(v % 2 != 1 for v in _ints(value)):
        raise ValueError(f"{owner}: {name} must be odd, got {value!r}.")


def check_rate(owner: str, name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a probability in [0, 1) (dropout, stochastic depth)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1) (a drop probability), got {value!r}.")


def check_positive(owner: str, name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a number > 0 (ratios)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{owner}: {name} must be a number > 0, got {value!r}.")


class Mlp(nn.Module):
    """Transformer MLP: ``fc1 -> act -> drop1 -> fc2 -> drop2`` on the last dimension (timm's names).

    Shared by every transformer family so ``zoo.accel`` can fuse ``fc1`` and its GELU in one place.

    Args:
        dim: input and output width C.
        hidden: hidden width.
        act_layer: activation class (default exact GELU).
        drop: dropout after the activation and after ``fc2`` (training only, as ``nn.Dropout``).

    Shapes: ``[..., C]`` in, ``[..., C]`` out.
    """

    def __init__(self, dim: int, hidden: int, *, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def reduced_channels(owner: str, channels: int, rd_ratio: float, rd_channels: int | None, rd_divisor: int) -> int:
    """Validated reduction width of a gating block: ``rd_channels`` if given, else ``channels * rd_ratio``
    rounded to ``rd_divisor`` (timm's rule, no lower bound), so every block names bad values alike."""
    check_int(owner, "channels", channels)
    check_positive(owner, "rd_ratio", rd_ratio)
    check_int(owner, "rd_divisor", rd_divisor)
    if rd_channels is not None:
        check_int(owner, "rd_channels", rd_channels)
        return rd_channels
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
