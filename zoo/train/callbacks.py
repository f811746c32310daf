"""Callbacks: the run summary (summary.json, curves.png), throughput, and the checks that every
checkpoint it reports can be, and was, written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .checkpoint_io import check_writable, write_hint

__all__ = ["RunSummary", "plot_curves"]


def _num(v):
    return float(v.item()) if hasattr(v, "item") else float(v)


class RunSummary(L.Callback):
    """Record per-epoch metrics; at the end write ``summary.json`` and ``curves.png`` in ``output_dir``.

    The summary holds the final and best metrics, epochs, wall time, training images/s (time spent in
    training batches only) and the checkpoint paths. Fitting stops before the first step if a
    checkpoint folder is not writable, and raises at the end if a reported checkpoint is missing.
    """

    def __init__(self, output_dir: str, monitor: str = "val/top1"):
        self.output_dir, self.monitor = Path(output_dir), monitor
        self.history: list[dict] = []
        self._t0 = self._tb = None
        self.train_time, self.train_images = 0.0, 0
        self.skipped: dict[str, dict[str, str]] = {"train": {}, "val": {}}  # split -> path -> reason

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        # Hours of training into a folder that cannot take the checkpoint help nobody: check first.
        problems = []
        if trainer.is_global_zero:
            folders = {c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)}
            problems = [p for p in (check_writable(f) for f in sorted(folders) if "://" not in f) if p]
        problems = trainer.strategy.broadcast(problems, src=0)  # every rank stops, not only rank 0
        if problems:
            raise PermissionError("\n".join(problems))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._tb = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_time += time.perf_counter() - self._tb
        self.train_images += len(batch["image"]) * trainer.world_size
        self._note_skipped("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._note_skipped("val", batch)

    def _note_skipped(self, split: str, batch) -> None:
        if isinstance(batch, dict):
            self.skipped[split].update(batch.get("skipped_items") or [])

    def on_exception(self, trainer, pl_module, exception) -> None:
        if trainer.is_global_zero:  # a run stopped for unreadable data still says which files
            self.write_skipped()

    # An epoch's row is taken once all its epoch-end hooks have logged (callbacks run before the
    # module's on_train_epoch_end): at the next epoch's start, or at the end of fitting.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pending = (trainer.current_epoch, trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush(trainer)

    def _flush(self, trainer) -> None:
        if getattr(self, "_pending", None) is None:
            return
        (epoch, step), self._pending = self._pending, None
        row = {"epoch": epoch, "step": step}
        row.update({k: _num(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        self.history.append(row)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._flush(trainer)
        if trainer.world_size > 1 and torch.distributed.is_initialized():  # each rank saw its own shard
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, self.skipped)
            for part in parts:
                for split, files in part.items():
                    self.skipped[split].update(files)
        missing = []
        if trainer.is_global_zero:
            self.write(trainer)
            missing = self.missing_checkpoints(trainer)
        missing = trainer.strategy.broadcast(missing, src=0)
        if missing:
            raise RuntimeError(
                "".join(f"Checkpoint {p} was reported saved but does not exist. " for p in missing)
                + f"The checkpoint writer failed without an error. To fix: {write_hint(missing[0])}")

    @staticmethod
    def missing_checkpoints(trainer) -> list[str]:
        """Paths that a ModelCheckpoint reports as saved (best, last) but that are not files."""
        paths = {p for c in trainer.checkpoint_callbacks for p in (getattr(c, "best_model_path", ""),
                                                                   getattr(c, "last_model_path", "")) if p}
        return sorted(p for p in paths if "://" not in p and not Path(p).is_file())

    def write(self, trainer) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best_row = max((r for r in self.history if self.monitor in r), key=lambda r: r[self.monitor], default=None)
        summary = {
            "final": self.history[-1] if self.history else {},
            "best": best_row or {},
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wall_time_s": round(time.perf_counter() - (self._t0 or time.perf_counter()), 2),
            "train_images_per_s": round(self.train_images / self.train_time, 1) if self.train_time else None,
            "checkpoints": {
                "best": ckpt.best_model_path if ckpt else None,
                "last": ckpt.last_model_path if ckpt else None,
            },
            "skipped_images": {"train": len(self.skipped["train"]), "val": len(self.skipped["val"]),
                               "list": self.write_skipped()},
            "history": self.history,
        }
        missing = self.missing_checkpoints(trainer)
        if missing:  # say so in the file too, rather than list files that are not there
            summary["checkpoints"]["missing"] = missing
        path = self.output_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        if self.history:
            plot_curves(self.history, self.output_dir / "curves.png")
        return path


    def write_skipped(self) -> str | None:
        """``skipped_images.txt`` (``split<TAB>path<TAB>reason`` per file) if any image was skipped."""
        rows = [f"{split}\t{path}\t{reason}" for split in ("train", "val")
                for path, reason in sorted(self.skipped[split].items())]
        if not rows:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "skipped_images.txt"
        path.write_text("\n".join(rows) + "\n")
        return str(path)


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss (train/val) and accuracy (val top-1, EMA top-1, train top-1) against epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in history]
    for key, ax in (("train/loss_epoch", a), ("val/loss", a), ("train/top1", b), ("val/top1", b), ("val/top1_ema", b)):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax.plot(ep, [float("nan") if y is None else y for y in ys], marker="o", label=key)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
