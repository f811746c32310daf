"""Small pieces shared by blocks and models: channel rounding, stochastic depth, input checks,
and Linear / Conv2d layers that keep a low-precision copy of their weights for autocast inference."""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["make_divisible", "DropPath", "check_image_input", "residual_add", "CastCache", "Linear", "Conv2d"]


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


def residual_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y``, with the operands cast to their promoted dtype before the add.

    Under autocast the residual stream is float32 and a branch ending in a linear is bfloat16;
    PyTorch's mixed-dtype add promotes element by element through a slow generic CPU loop
    (measured on a ViT-B activation, one core: 5.7 ms, against 1.3 ms for the cast and a float32
    add). Same values, dtype and autograd as ``x + y``.

    Shapes: ``x`` and ``y`` broadcastable to each other.
    """
    if x.dtype != y.dtype:
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    return x + y


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


class CastCache:
    """Mixin for a layer with ``weight`` and ``bias``: reuse their autocast copies across inference calls.

    Under ``torch.autocast`` every forward casts fp32 weights to bf16/fp16 again (autocast's own
    cache lives only until the autocast context exits); in inference that copy can be most of the
    step. When the module is in eval mode, grad is disabled and autocast is active, this keeps the
    low-precision weight and bias from the last call and reuses them while they are still the same
    tensors with the same contents: the key is the dtype, each tensor's ``data_ptr`` and
    ``_version`` (bumped by any in-place update: ``load_state_dict``, an optimizer step,
    ``copy_``), plus a weak reference to the weight (a replaced parameter misses). Training or
    grad-enabled calls never use or fill it.

    The copy is a plain attribute, not a buffer: it is not in ``state_dict``, is dropped by
    ``.to()``/``.cuda()``/``.half()`` (``_apply``), by pickling and by ``copy.deepcopy``, and
    holds one low-precision copy of the weight at most.
    """

    _cast: tuple | None = None
    _cast_memory_format = torch.preserve_format

    def cast_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight, bias)`` for this call: cached autocast-dtype copies when allowed, else the parameters."""
        w, b = self.weight, self.bias
        kind = w.device.type
        if (self.training or torch.is_grad_enabled() or w.dtype != torch.float32
                or not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind)
                or torch.compiler.is_compiling()):
            return w, b
        dtype = torch.get_autocast_dtype(kind)
        key = (dtype, w.data_ptr(), w._version) + ((b.data_ptr(), b._version) if b is not None else ())
        cast = self._cast
        if cast is None or cast[0] != key or cast[1]() is not w:
            self._cast = None  # free the stale copy before making the new one
            # Outside inference mode, so the copies also serve later no_grad (non-inference) calls.
            with torch.inference_mode(False):
                cw = w.detach().to(dtype, memory_format=self._cast_memory_format)
                cb = b.detach().to(dtype) if b is not None else None
            self._cast = cast = (key, weakref.ref(w), cw, cb)
        return cast[2], cast[3]

    def _apply(self, fn, recurse=True):
        self._cast = None
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        if mode:
            self._cast = None  # not used in training: don't hold the memory
        return super().train(mode)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_cast", None)
        return state


# oneDNN's linear with the bias (and optionally GELU) fused into the GEMM (the op inductor uses
# on CPU). ``aten::addmm`` first copies the broadcast bias into the output and GELU is another
# pass over the 4x-wide hidden tensor; on a CPU those memory passes cost as much as the bf16 GEMM.
_ONEDNN_LINEAR = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)


class Linear(CastCache, nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with :class:`CastCache` for autocast inference.

    In cached bf16 inference on CPU the product runs as one oneDNN call with the bias fused
    (:meth:`forward_act` also fuses a GELU); everywhere else it is ``F.linear``.
    """

    def _fused(self, w: torch.Tensor, x: torch.Tensor) -> bool:
        return (_ONEDNN_LINEAR is not None and w is not self.weight and w.dtype == torch.bfloat16
                and x.device.type == "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.cast_params()
        if self._fused(w, x):
            return _ONEDNN_LINEAR(x.to(w.dtype), w, b, "none", [], "")
        return F.linear(x, w, b)

    def forward_act(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """``act(self(x))``; an exact-erf ``nn.GELU`` is fused into the GEMM where :meth:`forward` fuses
        the bias, and in float32 CPU inference (no autograd, no autocast): there oneDNN's GEMM is a
        little slower than MKL's, but the separate GELU pass costs more (ViT-B fc1, 2 cores:
        53.7 ms fused against 59.6 ms)."""
        w, b = self.cast_params()
        if type(act) is nn.GELU and act.approximate == "none":
            if self._fused(w, x):
                return _ONEDNN_LINEAR(x.to(w.dtype), w, b, "gelu", [], "none")
            if (_ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                    and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                    and not torch.compiler.is_compiling()):
                return _ONEDNN_LINEAR(x, w, b, "gelu", [], "none")
        return act(F.linear(x, w, b))


class Conv2d(CastCache, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) with :class:`CastCache` for autocast inference.

    The cached weight is channels-last: oneDNN's convolutions then run without reordering the
    weight, and in the channels-last layout when the input is (see ``ResNet.forward_features``).
    """

    _cast_memory_format = torch.channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.cast_params()
        return self._conv_forward(x, w, b)
