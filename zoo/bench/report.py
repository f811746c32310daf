"""Writing benchmark rows out: CSV, a markdown report with the machine, and a ratio chart (PNG)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .harness import COLUMNS, NO_TWIN

__all__ = ["fmt", "write_csv", "read_csv", "markdown_report", "write_chart", "write_outputs"]


def fmt(value, digits: int = 2) -> str:
    """A table cell: '-' for missing, fixed decimals for floats."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    return path


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a bench CSV, numbers back as floats ('' stays None)."""
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v) if v != "" else None
                except ValueError:
                    parsed[k] = v
            out.append(parsed)
    return out


_MD_COLUMNS = [
    ("model", "model", 0), ("impl", "impl", 0), ("precision", "prec", 0), ("mode", "mode", 0),
    ("params_m", "params (M)", 2), ("gmacs", "GMACs", 2), ("img_s", "img/s", 1), ("mem_mb", "mem (MiB)", 0),
    ("frac_of_ceiling", "of peak", 2), ("ratio", "zoo / twin", 2), ("vs", "vs", 0), ("note", "note", 0),
]


def markdown_report(rows: Sequence[dict], machine: dict[str, str], ceilings: dict[str, float]) -> str:
    """The machine, its matmul ceilings, and one table line per row."""
    lines = ["# Benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [f"- matmul ceiling {p}: {g:.1f} GFLOP/s" for p, g in ceilings.items()]
    if rows:
        r0 = rows[0]
        lines.append(f"- batch {int(r0['batch'])}, channels_last={r0['channels_last']}, "
                     f"compile={r0['compile']}, median of {int(r0['repeats'])} interleaved rounds")
    lines += [
        "",
        "`zoo / twin`: zoo img/s over this twin's (twin rows) or over the fastest twin's (zoo rows); "
        "`of peak`: achieved FLOP/s (2 x MACs per image, x3 for a train step) over the matmul ceiling; "
        "`mem`: peak of one step above what was resident before it.",
        "",
        "| " + " | ".join(h for _, h, _ in _MD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _MD_COLUMNS) + "|",
    ]
    for r in rows:
        cells = [fmt(r.get(k), d) if d else fmt(r.get(k)) for k, _, d in _MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_chart(rows: Sequence[dict], path: str | Path) -> Path:
    """Bar chart of zoo / fastest-twin throughput per model, one bar group per precision+mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zoo_rows = [r for r in rows if r["library"] == "zoo" and r["vs"] != NO_TWIN and r["ratio"] is not None]
    models = sorted({r["model"] for r in zoo_rows})
    settings = sorted({(r["precision"], r["mode"]) for r in zoo_rows})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(models) + 2), 4))
    width = 0.8 / max(len(settings), 1)
    for k, (prec, mode) in enumerate(settings):
        vals = {r["model"]: r["ratio"] for r in zoo_rows if (r["precision"], r["mode"]) == (prec, mode)}
        xs = [i + k * width for i, m in enumerate(models) if m in vals]
        ax.bar(xs, [vals[m] for m in models if m in vals], width, label=f"{prec} {mode}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=30, ha="right")
    ax.set_ylabel("zoo img/s / fastest twin img/s")
    ax.set_title("Throughput relative to the fastest twin (>1: zoo faster)")
    if settings:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(rows: Sequence[dict], machine: dict[str, str], ceilings: dict[str, float],
                  out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.csv``, ``bench.md`` and ``bench.png`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "bench.md"
    md.write_text(markdown_report(rows, machine, ceilings))
    return {"csv": write_csv(rows, out / "bench.csv"), "md": md, "png": write_chart(rows, out / "bench.png")}
