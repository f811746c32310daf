"""The benchmark: each zoo model next to its torchvision / timm twins, one row per implementation.

>>> rows = run_bench(cases_from_registry("resnet50"), batch=8, repeats=3)

Rows are plain dicts with the keys of :data:`COLUMNS`; ``ratio`` is zoo throughput divided by
the twin's (on a twin row) or by the fastest twin's (on the zoo row), the median over rounds of
the interleaved timing. Train throughput counts a training step as 3x the forward FLOPs.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..flops import count_macs
from ..registry import list_models
from .onnxrt import BF16_NOTE, ORT_LIBRARY, OrtModule
from .measure import make_step, matmul_ceiling_gflops, paired_ratio, peak_step_memory_mb, time_interleaved
from .twins import PLAIN_LIBRARY, Impl, native_img_size, twins_for, zoo_impl, zoo_plain_impl

__all__ = ["COLUMNS", "NO_TWIN", "BenchCase", "cases_from_registry", "run_bench"]

COLUMNS = [
    "model", "impl", "library", "device", "precision", "mode", "batch", "img_size", "channels_last",
    "compile", "params_m", "gmacs", "img_s", "ms_per_batch", "mem_mb", "gflop_s", "ceiling_gflop_s",
    "frac_of_ceiling", "ratio", "vs", "note", "repeats",
]
NO_TWIN = "no twin"


@dataclass
class BenchCase:
    """One comparison: a zoo model and its twins.

    Attributes:
        name: the zoo model's name (first column of every row of this case).
        impl: how to build the zoo model.
        twins: same-architecture models from other libraries ([] reports "no twin").
        img_size: native input size, used unless the run overrides it.
    """

    name: str
    impl: Impl
    twins: list[Impl] = field(default_factory=list)
    img_size: int = 224


def cases_from_registry(pattern: str, *, fast: bool = True, compare_plain: bool = False) -> list[BenchCase]:
    """Cases for the registered models matching ``pattern`` (comma-separated fnmatch patterns).

    Args:
        fast: build the zoo models with ``zoo.accel`` (``zoo.create``'s default); False: plain.
        compare_plain: also time the plain zoo model (library ``"zoo-plain"``); its row's ratio
            is accelerated / plain, what ``zoo.accel`` buys.
    """
    names = list_models(pattern)
    if not names:
        raise ValueError(f"No registered model matches {pattern!r}; see zoo.list_models().")
    return [BenchCase(n, zoo_impl(n, fast), ([zoo_plain_impl(n)] if compare_plain and fast else []) + twins_for(n),
                      native_img_size(n)) for n in names]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(
    cases: Sequence[BenchCase],
    *,
    batch: int = 16,
    img_size: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    modes: Sequence[str] = ("infer",),
    device: str = "cpu",
    compile: bool = False,
    freeze: bool = False,
    channels_last: bool = False,
    repeats: int = 5,
    warmup: int = 2,
    iters: int = 1,
    in_chans: int = 3,
    ceilings: dict[str, float] | None = None,
    timer: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = _log,
) -> list[dict]:
    """Benchmark every case against its twins; returns one row per (case, impl, precision, mode).

    Args:
        cases: what to compare (:func:`cases_from_registry`, or hand-made for tests).
        batch: images per step.
        img_size: square input size; None uses each case's native size.
        precisions: any of ``"fp32"``, ``"bf16"`` (autocast).
        modes: any of ``"infer"``, ``"train"`` (forward + backward + SGD step).
        device: ``"cpu"`` or ``"cuda"``.
        compile: wrap every model in ``torch.compile`` (inductor).
        freeze: with ``compile``, inductor freezing for inference (weights folded into the graph
            as constants, cast once, pre-packed for oneDNN: PyTorch's advice for CPU inference).
            Training steps are compiled as without it. Implies ``compile``.
        channels_last: models and input in channels-last memory format.
        repeats: timed rounds; each round runs every implementation ``iters`` times, in turn.
        warmup: untimed steps per implementation before timing.
        iters: steps per implementation per round.
        in_chans: input channels.
        ceilings: matmul GFLOP/s per precision; measured here when None.
        timer: the clock (tests inject a fake one).
        log: progress messages.
    """
    dev = torch.device(device)
    compile = compile or freeze
    compiled = ("inductor+freezing" if freeze else "inductor") if compile else "eager"
    if ceilings is None:
        ceilings = {p: matmul_ceiling_gflops(p, dev) for p in precisions}
    rows: list[dict] = []
    for case in cases:
        size = img_size or case.img_size
        impls, models, notes = _build(case, size, dev, channels_last, compile, log)
        macs = {i.name: count_macs(getattr(m, "flop_model", None) or m, torch.zeros(1, in_chans, size, size, device=dev))
                for i, m in zip(impls, models[0])}
        params = {i.name: _params(m) for i, m in zip(impls, models[0])}
        x = torch.randn(batch, in_chans, size, size, device=dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for precision in precisions:
            for mode in modes:
                log(f"{case.name}: {precision} {mode} ({', '.join(i.name for i in impls)})")
                steps = [make_step(m, mode, precision, x) for m in models[1]]
                with _inductor_freezing(freeze):  # compilation happens in the first calls
                    for step in steps:
                        for _ in range(warmup):
                            step()
                mem = [peak_step_memory_mb(step, dev) for step in steps]
                times = time_interleaved(steps, device=dev, repeats=repeats, iters=iters, timer=timer)
                flops_per_img = {"infer": 2, "train": 6}[mode]
                med = [statistics.median(t) for t in times]
                # The zoo row is compared with the fastest other library, never with its own plain form.
                others = [j for j in range(1, len(impls)) if impls[j].library not in (PLAIN_LIBRARY, ORT_LIBRARY)]
                fastest = max(others, key=lambda j: batch / med[j], default=None)
                for j, impl in enumerate(impls):
                    img_s = batch / med[j]
                    gflop_s = flops_per_img * macs[impl.name] * img_s / 1e9
                    if j == 0:
                        ratio = paired_ratio(times[0], times[fastest]) if fastest is not None else None
                        vs = impls[fastest].name if fastest is not None else NO_TWIN
                    else:
                        ratio, vs = paired_ratio(times[0], times[j]), impls[0].name
                    rows.append({
                        "model": case.name, "impl": impl.name, "library": impl.library,
                        "device": dev.type, "precision": precision, "mode": mode, "batch": batch,
                        "img_size": size, "channels_last": channels_last, "compile": compiled,
                        "params_m": params[impl.name] / 1e6, "gmacs": macs[impl.name] / 1e9,
                        "img_s": img_s, "ms_per_batch": med[j] * 1e3, "mem_mb": mem[j],
                        "gflop_s": gflop_s, "ceiling_gflop_s": ceilings[precision],
                        "frac_of_ceiling": gflop_s / ceilings[precision], "ratio": ratio, "vs": vs,
                        "note": BF16_NOTE if impl.library == ORT_LIBRARY and precision != "fp32" else notes[j],
                        "repeats": repeats,
                    })
        del models, steps
        gc.collect()
    return rows


def _inductor_freezing(on: bool):
    if not on:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def _build(case: BenchCase, size: int, dev: torch.device, channels_last: bool, compile: bool, log):
    """Build the zoo model and its twins; returns (impls, (eager models, run models), notes)."""
    impls, eager, notes = [], [], []
    for impl in [case.impl, *case.twins]:
        try:
            model = impl.factory(size).to(dev)
        except Exception as e:  # a twin that cannot be built is reported, not fatal
            if impl is case.impl:
                raise
            log(f"{case.name}: skipping twin {impl.name}: {type(e).__name__}: {e}")
            continue
        impls.append(impl)
        eager.append(model)
        notes.append("")
    zoo_params = _params(eager[0])
    for j in range(1, len(eager)):
        p = _params(eager[j])
        if abs(p - zoo_params) > 1e-3 * zoo_params:
            notes[j] = f"params differ: {p / 1e6:.2f}M vs zoo {zoo_params / 1e6:.2f}M"
            log(f"{case.name}: {impls[j].name} {notes[j]}")
    run = eager
    if channels_last:
        run = [m.to(memory_format=torch.channels_last) for m in run]
    if compile:
        run = [m if isinstance(m, OrtModule) else torch.compile(m) for m in run]  # onnxruntime: its own graph
    return impls, (eager, run), notes
