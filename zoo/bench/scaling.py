"""How inference cost grows with the number of tokens: ``python -m zoo.bench.scaling MODELS``.

    python -m zoo.bench.scaling vit_s_16 vit_s_16:attn=linformer,k=64 vit_s_16:attn=efficient \\
        --sizes 224,320,448,640,896 --precision fp32,bf16 --out scaling_results

MODELS are registry names, each optionally followed by ``:key=value,...`` architecture overrides
(given as separate arguments or comma-joined: a ``key=value`` item belongs to the model before it).
``attn`` and the chosen attention's own arguments (Linformer's ``k``) become ``attn=`` and
``attn_kwargs=``; any other key goes to ``zoo.create`` (``vit_t_16:depth=6``).

Every model is built once (at its own ``img_size``; other sizes resample the position table and
Linformer's projections) and all models run side by side in one process. For each input size and
precision they are timed round-robin, each timed call after an untimed one of the
same model (A A B B C C ..., ``zoo.bench.measure.time_interleaved``): batch 1 (``--batch``), inference under
``torch.inference_mode``, ``--warmup`` calls first, latency the median of ``--repeats`` rounds.

Memory is the peak of one forward above what the process held before it (weights excluded):
on the CPU the resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
minus the resident set before, after ``malloc_trim``; on CUDA ``max_memory_allocated``
(``zoo.bench.measure.peak_step_memory_mb``). Divided by the batch: MiB per image. Resident-set
growth is page-granular and the allocator can reuse cached pages, so small values (a few MiB)
are noise.

The exponent is the least-squares slope of log latency on log token count, per model and
precision, over all sizes and over the largest three: 2 is quadratic, 1 linear. Token count:
patches plus prefix tokens for a model with ``patch_size``, else ``H * W / 16**2``.

Writes ``scaling.csv`` (one row per model, size and precision), ``exponents.csv``,
``scaling.png`` (log-log latency and memory against tokens) and ``scaling.md`` (both tables and
the machine) into ``--out``.
"""
from __future__ import annotations

import argparse
import ast
import csv
import inspect
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .measure import machine_info, make_step, peak_step_memory_mb, sync, time_interleaved

__all__ = ["ModelSpec", "parse_models", "token_count", "fit_exponent", "run_scaling", "main"]

COLUMNS = ["model", "precision", "size", "tokens", "latency_ms", "latency_p25_ms", "latency_p75_ms",
           "peak_mem_mib_per_image", "params_m"]


@dataclass
class ModelSpec:
    """One model to measure: a registry name and its overrides. ``label`` is how the user wrote it."""

    name: str
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.name
        flat = {k: v for k, v in self.kwargs.items() if k != "attn_kwargs"}
        flat.update(self.kwargs.get("attn_kwargs", {}))
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in flat.items())


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: linformer, efficient


def _attn_arg_names(attn) -> set[str]:
    from ..models.vit import ATTN_LAYERS

    cls = ATTN_LAYERS.get(attn)
    if cls is None:
        return set()
    params = inspect.signature(cls.__init__).parameters
    # What a user may set: the keyword-only arguments the ViT does not set itself.
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"num_tokens", "attn_drop", "proj_drop"}


def parse_models(items: list[str]) -> list[ModelSpec]:
    """``["vit_s_16", "vit_s_16:attn=linformer,k=64"]`` (or the same comma-joined) -> specs.

    Raises:
        ValueError: an override before any model name, or one without ``=``, or an unknown model.
    """
    from ..registry import get_model_entry

    specs: list[ModelSpec] = []
    raw: list[tuple[str, list[str]]] = []
    for token in (t.strip() for item in items for t in item.split(",")):
        if not token:
            continue
        name, sep, rest = token.partition(":")
        if "=" in name:  # key=value continuing the previous model's overrides
            if not raw:
                raise ValueError(f"override {token!r} comes before any model name; write MODEL:{token}.")
            raw[-1][1].append(token)
            continue
        raw.append((name, [rest] if sep and rest else []))
    for name, pairs in raw:
        get_model_entry(name)  # unknown names raise with suggestions
        kv = {}
        for pair in pairs:
            key, eq, val = pair.partition("=")
            if not eq or not key:
                raise ValueError(f"override {pair!r} of {name} is not key=value (e.g. {name}:attn=linformer,k=64).")
            kv[key.strip()] = _value(val.strip())
        attn_keys = _attn_arg_names(kv.get("attn")) & set(kv)
        attn_kwargs = {k: kv.pop(k) for k in sorted(attn_keys, key=list(kv).index)}
        if attn_kwargs:
            kv["attn_kwargs"] = attn_kwargs
        specs.append(ModelSpec(name, kv))
    if not specs:
        raise ValueError("no models given; e.g. vit_s_16 vit_s_16:attn=linformer,k=64")
    return specs


def token_count(model: nn.Module, size: int) -> int:
    """Tokens a ViT-like model sees at a ``size x size`` input (prefix included); ``size**2 / 256``
    (16-pixel patches) for a model without ``patch_size``."""
    patch = getattr(model, "patch_size", None)
    if patch is None:
        return max(1, round(size * size / 256))
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return getattr(model, "num_prefix_tokens", 0) + (size // ph) * (size // pw)


def fit_exponent(tokens: list[float], latency: list[float]) -> float:
    """Least-squares slope of ``log latency`` on ``log tokens``; NaN for fewer than two sizes."""
    pts = [(math.log(t), math.log(s)) for t, s in zip(tokens, latency) if t > 0 and s > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else float("nan")


def run_scaling(specs: list[ModelSpec], sizes: list[int], precisions: list[str], *, batch: int = 1,
                repeats: int = 5, warmup: int = 2, device: str = "cpu", fast: bool = True,
                log=print) -> tuple[list[dict], list[dict]]:
    """Measure every model at every size and precision; returns ``(rows, exponents)``.

    ``rows``: one dict per model, precision and size with :data:`COLUMNS`. ``exponents``: one per
    model and precision: ``model``, ``precision``, ``exponent_all``, ``exponent_top3`` (the
    largest three sizes), ``sizes``.
    """
    import zoo

    dev = torch.device(device)
    models = []
    for spec in specs:
        torch.manual_seed(0)
        models.append(zoo.create(spec.name, fast=fast, **spec.kwargs).to(dev).eval())
        log(f"built {spec.label}: {sum(p.numel() for p in models[-1].parameters()) / 1e6:.1f}M parameters")
    rows = []
    for precision in precisions:
        for size in sizes:
            x = torch.randn(batch, 3, size, size, device=dev)
            steps = [make_step(m, "infer", precision, x) for m in models]
            for step in steps:
                for _ in range(warmup):
                    step()
            sync(dev)
            times = time_interleaved(steps, device=dev, repeats=repeats)
            for spec, model, step, t in zip(specs, models, steps, times):
                mem = peak_step_memory_mb(step, dev)
                ms = sorted(v * 1e3 for v in t)
                q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0], ms[0], ms[0]]
                row = {"model": spec.label, "precision": precision, "size": size, "tokens": token_count(model, size),
                       "latency_ms": round(statistics.median(ms), 3), "latency_p25_ms": round(q[0], 3),
                       "latency_p75_ms": round(q[2], 3),
                       "peak_mem_mib_per_image": None if mem is None else round(mem / batch, 2),
                       "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
                rows.append(row)
                log(f"{precision} {size:>4}px {row['tokens']:>6} tokens  {row['latency_ms']:>10.2f} ms  "
                    f"{row['peak_mem_mib_per_image']} MiB/img  {spec.label}")
    return rows, exponents(rows)


def exponents(rows: list[dict]) -> list[dict]:
    """Per model and precision: the exponent over all sizes and over the largest three."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["precision"]) for r in rows))
    for model, precision in keys:
        pts = sorted((r["tokens"], r["latency_ms"]) for r in rows if r["model"] == model and r["precision"] == precision)
        tok, lat = [p[0] for p in pts], [p[1] for p in pts]
        sizes = sorted(r["size"] for r in rows if r["model"] == model and r["precision"] == precision)
        out.append({"model": model, "precision": precision, "exponent_all": round(fit_exponent(tok, lat), 3),
                    "exponent_top3": round(fit_exponent(tok[-3:], lat[-3:]), 3),
                    "sizes": ",".join(map(str, sizes))})
    return out


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    """Log-log latency and memory per image against tokens, a line per model (dashed: bf16)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {}
    for model, precision in dict.fromkeys((r["model"], r["precision"]) for r in rows):
        pts = sorted((r["tokens"], r["latency_ms"], r["peak_mem_mib_per_image"]) for r in rows
                     if r["model"] == model and r["precision"] == precision)
        color = colors.setdefault(model, f"C{len(colors)}")
        style = "-" if precision == "fp32" else "--"
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color, label=f"{model} {precision}")
        mem = [(p[0], p[2]) for p in pts if p[2] is not None and p[2] > 0]
        if mem:
            ax_m.plot(*zip(*mem), style, marker="o", color=color, label=f"{model} {precision}")
    tok = sorted({r["tokens"] for r in rows})
    if len(tok) > 1:  # guides: slope 1 and 2 through the first model's first point
        first = min((r for r in rows if r["tokens"] == tok[0]), key=lambda r: r["latency_ms"])
        for k, ls in ((1, ":"), (2, "-.")):
            ax_t.plot(tok, [first["latency_ms"] * (t / tok[0]) ** k for t in tok], ls, color="grey", lw=0.8,
                      label=f"slope {k}")
    for ax, ylabel in ((ax_t, "latency per forward (ms)"), (ax_m, "peak memory per image (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], exps: list[dict], info: dict, command: str) -> str:
    lines = [f"`{command}`", "", "| model | precision | exponent (all sizes) | exponent (largest 3) |", "|---|---|---|---|"]
    lines += [f"| {e['model']} | {e['precision']} | {e['exponent_all']:.2f} | {e['exponent_top3']:.2f} |" for e in exps]
    lines += ["", "| model | precision | size | tokens | latency ms (median) | p25-p75 | peak MiB / image |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['size']} | {r['tokens']} | {r['latency_ms']:.1f} | "
              f"{r['latency_p25_ms']:.1f}-{r['latency_p75_ms']:.1f} | {r['peak_mem_mib_per_image']} |" for r in rows]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sorted(set(vals))


def _precisions(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in ("fp32", "bf16")]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"precision: choose from fp32, bf16 (comma-separated), got {text!r}")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zoo.bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registry names, each optionally NAME:key=value,... (see above)")
    p.add_argument("--sizes", type=_ints, default=[224, 320, 448, 640, 896], help="input sides in pixels")
    p.add_argument("--precision", type=_precisions, default=["fp32"], help="fp32, bf16 or both")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; latency is their median")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model, size and precision")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--plain", action="store_true", help="zoo.create(..., fast=False): no zoo.accel")
    p.add_argument("--out", type=Path, default=Path("scaling_results"))
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    try:
        args.specs = parse_models(args.models)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    rows, exps = run_scaling(args.specs, args.sizes, args.precision, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, device=args.device, fast=not args.plain)
    _write_csv(args.out / "scaling.csv", rows, COLUMNS)
    _write_csv(args.out / "exponents.csv", exps, ["model", "precision", "exponent_all", "exponent_top3", "sizes"])
    plot(rows, args.out / "scaling.png")
    command = "python -m zoo.bench.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(rows, exps, info, command)
    (args.out / "scaling.md").write_text(md)
    print(md)
    print(f"wrote {args.out}/scaling.csv, exponents.csv, scaling.png, scaling.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
