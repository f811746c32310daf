"""Timing, memory and machine measurements: one step function per model, interleaved timing.

All models of a comparison live in one process and are timed round-robin (A B A B ...,
each timed call after an untimed one of the same model), so noise from other work on the machine
hits them alike; ratios are medians of per-round ratios.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "make_step",
    "sync",
    "peak_step_memory_mb",
    "time_interleaved",
    "paired_ratio",
    "matmul_ceiling_gflops",
    "machine_info",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def make_step(model: nn.Module, mode: str, precision: str, x: torch.Tensor) -> Callable[[], None]:
    """A closure running one inference batch or one training step (forward, backward, SGD).

    Args:
        model: the model, already on ``x``'s device; put in eval (``infer``) or train mode here.
        mode: ``"infer"`` or ``"train"``.
        precision: ``"fp32"`` or ``"bf16"`` (``torch.autocast`` to bfloat16).
        x: the input batch ``[B, C, H, W]``.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    device = x.device
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), _autocast(device, precision):
                model(x)

        return step
    if mode == "train":
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        target = torch.zeros(x.shape[0], dtype=torch.long, device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                out = model(x)
            F.cross_entropy(out.float(), target).backward()
            opt.step()

        return step
    raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_step_memory_mb(step: Callable[[], None], device: torch.device | str) -> float | None:
    """Peak memory of one ``step`` above what was held before it, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the process's resident-set
    high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus ``VmRSS`` before,
    after glibc's ``malloc_trim`` so pages cached by the allocator do not hide the step's growth
    (approximate: the allocator may still reuse some cached pages).
    Weights (and, after warm-up, optimizer state) are held before the step so are not counted:
    this is activations, gradients and workspace. None where it cannot be measured.
    """
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _malloc_trim()  # hand cached free pages back, else a step reusing them shows no growth
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _read_status_kb("VmRSS")
    step()
    peak = _read_status_kb("VmHWM")
    if base is None or peak is None:
        return None
    return max(peak - base, 0) / 1024


def time_interleaved(
    steps: Sequence[Callable[[], None]],
    *,
    device: torch.device | str,
    repeats: int,
    iters: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Seconds per step for each step function, measured round-robin.

    Each round gives every step one untimed call and then ``iters`` timed calls, so every timed call
    follows a call of the same step, as each step of a training loop or a server running one model
    does. Right after another model's step a step pays for the memory state that step left behind
    (on the CPU glibc unmaps large freed blocks and the next step page-faults its buffers in afresh:
    ~6k faults for pvt_v2_b0's fp32 train step timed straight after timm's, none after its own), and
    with a fixed order that cost fell on one model only.

    Returns:
        ``times[i][r]``: mean seconds of one timed call of ``steps[i]`` in round ``r``.
    """
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            step()  # untimed: settles the allocator (and caches) after the previous model
            sync(device)
            t0 = timer()
            for _ in range(iters):
                step()
            sync(device)
            times[i].append((timer() - t0) / iters)
    return times


def paired_ratio(times_a: Sequence[float], times_b: Sequence[float]) -> float:
    """Median over rounds of throughput(a) / throughput(b) = time(b) / time(a)."""
    return statistics.median(tb / ta for ta, tb in zip(times_a, times_b))


def matmul_ceiling_gflops(
    precision: str, device: torch.device | str, n: int | None = None, repeats: int = 5
) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``precision`` on ``device`` (the machine's ceiling)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    a @ b  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, threads, library versions, device."""
    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    for lib in ("torchvision", "timm"):
        with contextlib.suppress(ImportError):
            info[lib] = __import__(lib).__version__
    return info
