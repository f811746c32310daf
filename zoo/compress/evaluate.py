"""What a compression costs: the float and the compressed model side by side on one validation set.

``python eval.py ckpt_path=... compress=int8-dynamic`` (or ``int8-weight``, ``int8-static``,
``prune``, or ``compress.prune_ratio=0.5``) calls :func:`compare` after the float evaluation: it
compresses the model (calibration / head-scoring batches from the *train* split, with the eval
preprocessing), evaluates it on the same split, and reports top-1 and its change, top-1 agreement
with the float model, parameters, size on disk (both serialised to a temporary file) and the speed
ratio, timed in one process with the two models interleaved round by round (median of the rounds).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn

from .quantize import METHODS as QUANT_METHODS
from .quantize import quantize, saved_bytes

__all__ = ["CHOICES", "resolve_method", "compress", "calibration_batches", "speed_ratio", "compare"]

CHOICES = (*QUANT_METHODS, "prune")


def resolve_method(cfg) -> str | None:
    """The method a ``compress`` config asks for: its ``method``, or ``prune`` when only a ratio is
    given; None for no compression.

    Raises:
        ValueError: an unknown method, or ``prune`` without a ratio in (0, 1).
    """
    method, ratio = cfg.get("method"), cfg.get("prune_ratio")
    if method is None and ratio is not None:
        method = "prune"
    if method is None:
        return None
    if method not in CHOICES:
        raise ValueError(f"Unknown compress.method {method!r}; choose from {list(CHOICES)} (or compress=<name>).")
    if method == "prune" and (not isinstance(ratio, (int, float)) or not 0 < ratio < 1):
        raise ValueError(f"compress.prune_ratio must be a number in (0, 1) (the fraction of attention heads "
                         f"removed); got {ratio!r}.")
    return method


def calibration_batches(datamodule, n_batches: int, batch_size: int, seed: int = 0) -> list[tuple]:
    """``n_batches`` of ``(images [B, C, H, W], targets [B])`` from the train split, shuffled with
    ``seed`` (a sorted split would calibrate on one class), preprocessed as for evaluation."""
    from ..data.folder import ImageFolder, collate_skip

    train = ImageFolder(f"{datamodule.root}/{datamodule.splits[0]}", datamodule.classes,
                        datamodule.val_set.transform, max_pixels=datamodule.max_image_pixels)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = []
    for start in range(0, min(len(order), n_batches * batch_size), batch_size):
        b = collate_skip([train[i] for i in order[start:start + batch_size]])
        if len(b["image"]):
            batches.append((b["image"], b["target"]))
    if not batches:
        raise ValueError(f"{train.root} gave no readable image to calibrate on.")
    return batches


def compress(model: nn.Module, method: str, *, batches: list[tuple], prune_ratio: float | None = None) -> nn.Module:
    """The compressed copy of ``model``: :func:`zoo.compress.quantize` or :func:`zoo.compress.prune_heads`."""
    if method == "prune":
        try:
            from . import prune_heads
        except ImportError as e:
            raise ValueError("compress=prune needs zoo.compress.prune_heads, which this install lacks.") from e
        return prune_heads(copy.deepcopy(model), ratio=prune_ratio, data=batches)
    return quantize(model, method, calib=[x for x, _ in batches])


class _StaysPut:
    """``predict`` moves its model with ``.to(device)``; torchao's int8 tensors refuse that swap (and
    are on the CPU already), so the compressed model is handed over behind a ``.to`` that does nothing."""

    def __init__(self, model: nn.Module):
        self.model = model

    def to(self, device):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _disk_bytes(model: nn.Module) -> int:
    if model.__dict__.get("quantization") in QUANT_METHODS:
        return saved_bytes(model)
    with tempfile.TemporaryDirectory() as d:  # float or pruned: a plain state_dict
        torch.save(model.state_dict(), os.path.join(d, "m.pt"))
        return os.path.getsize(os.path.join(d, "m.pt"))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def speed_ratio(float_model: nn.Module, other: nn.Module, x: torch.Tensor, rounds: int = 7) -> dict:
    """Seconds per batch of each model, interleaved round by round after one warm-up call each.

    Returns:
        ``{"float_s": median, "compressed_s": median, "speedup": median of float / compressed per round}``.
    """
    from ..bench.measure import paired_ratio, time_interleaved

    float_model(x), other(x)  # warm-up: first-call allocations and oneDNN primitive creation
    times = time_interleaved([lambda: float_model(x), lambda: other(x)], device="cpu", repeats=rounds)
    return {"float_s": float(np.median(times[0])), "compressed_s": float(np.median(times[1])),
            "speedup": paired_ratio(times[1], times[0])}


def compare(model: nn.Module, cfg, datamodule, float_metrics: dict, float_pred: dict, *, device: str = "cpu",
            out_dir: str | os.PathLike | None = None) -> dict | None:
    """Compress ``model`` as ``cfg`` (the ``compress`` config group) says, evaluate it on the split
    ``float_metrics`` / ``float_pred`` came from, print the comparison, write it to
    ``out_dir/compress.json`` and return it (None when ``cfg`` asks for no compression)."""
    from ..train.evaluate import predict

    method = resolve_method(cfg)
    if method is None:
        return None
    if device != "cpu":
        raise ValueError(f"compress= runs on the CPU (int8 kernels are CPU kernels); got device={device!r}.")
    batches = calibration_batches(datamodule, int(cfg.calib_batches), int(cfg.calib_batch_size))
    small = saved = compress(model, method, batches=batches, prune_ratio=cfg.get("prune_ratio"))
    compiled = bool(cfg.get("compile")) and method == "int8-static"
    x = next(iter(datamodule.val_dataloader()))["image"]
    # Compiling: inductor's freezing folds the int8 weights into oneDNN kernels; it must be on for every
    # (re)compilation (each batch size is its own static graph), hence for the whole evaluation.
    with torch._inductor.config.patch(freezing=compiled):
        if compiled:  # int8 oneDNN kernels instead of reference numerics
            small = torch.compile(small, dynamic=False)
            with torch.inference_mode():
                small(x)  # compiles now, outside the timed rounds
        pred = predict(_StaysPut(small), datamodule.val_dataloader(), device="cpu")
        speed = speed_ratio(model, small, x, rounds=int(cfg.speed_rounds))
    top1 = float((pred["probs"].argmax(1) == pred["target"]).mean())
    agree = float((pred["probs"].argmax(1) == float_pred["probs"].argmax(1)).mean())
    # quantisation keeps every weight (a static graph holds them as constants, not parameters)
    params = _params(model) if method in QUANT_METHODS else _params(small)
    out = {"method": method, "prune_ratio": cfg.get("prune_ratio") if method == "prune" else None,
           "top1": top1, "top1_float": float_metrics["top1"], "top1_change": top1 - float_metrics["top1"],
           "top1_agreement": agree, "params": params, "params_float": _params(model),
           "disk_bytes": _disk_bytes(saved), "disk_bytes_float": _disk_bytes(model),
           "speed_batch": len(x), **speed}
    name = method + (f" {out['prune_ratio']:g}" if method == "prune" else "") + (" compiled" if compiled else "")
    mb = 1 / 2**20
    print(f"{name}: top-1 {top1:.4f} ({out['top1_change']:+.4f} vs float {out['top1_float']:.4f}), "
          f"agrees with float on {agree:.1%}\n"
          f"  parameters {out['params']:,} (float {out['params_float']:,})   size on disk "
          f"{out['disk_bytes'] * mb:.2f} MB (float {out['disk_bytes_float'] * mb:.2f} MB, "
          f"{out['disk_bytes'] / out['disk_bytes_float']:.2f}x)\n"
          f"  speed {out['speedup']:.2f}x the float model ({out['compressed_s'] * 1e3:.1f} vs "
          f"{out['float_s'] * 1e3:.1f} ms per batch of {len(x)}, {torch.get_num_threads()} threads, "
          f"median of {int(cfg.speed_rounds)} interleaved rounds)")
    if out_dir is not None:
        path = os.path.join(out_dir, "compress.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        print(f"compression:      {path}")
    return out
