"""Evaluation on an ImageFolder split: top-1/top-5, per-class accuracy, confusion matrix, predictions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint

__all__ = ["model_from_checkpoint", "predict", "write_report", "plot_confusion", "write_viz"]


def model_from_checkpoint(path: str, *, use_ema: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model a train.py checkpoint holds: ``(model in eval mode, meta)`` (:func:`zoo.checkpoint.load_checkpoint`)."""
    return load_checkpoint(path, use_ema=use_ema)


@torch.inference_mode()
def predict(model: nn.Module, loader, device: str = "cpu", precision: str = "32-true") -> dict[str, np.ndarray]:
    """Run ``model`` over ``loader`` (batches from :func:`zoo.data.collate_skip`).

    Returns:
        ``{"probs": [N, K], "target": [N], "index": [N]}`` for the decodable images, and ``skipped``.
    """
    model.to(device)
    probs, target, index, skipped, skipped_items = [], [], [], 0, []
    amp = precision.startswith("bf16")
    for batch in loader:
        skipped += int(batch["skipped"])
        skipped_items += batch.get("skipped_items", [])
        if len(batch["image"]) == 0:
            continue
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = model(batch["image"].to(device))
        probs.append(logits.float().softmax(-1).cpu())
        target.append(batch["target"])
        index.append(batch["index"])
    if not probs:  # nothing to score: metrics of no image would be a crash or a lie
        where = getattr(getattr(loader, "dataset", None), "root", "the evaluation split")
        examples = ", ".join(p for p, _ in skipped_items[:3])
        raise ValueError(f"{where} has no readable image: all {skipped} images were skipped (undecodable, "
                         f"truncated or over data.max_image_pixels){', e.g. ' + examples if examples else ''}. "
                         "Repair or remove those files, or point data.root / split at the right folder.")
    return {"skipped_items": skipped_items, "probs": torch.cat(probs).numpy(), "target": torch.cat(target).numpy(),
            "index": torch.cat(index).numpy(), "skipped": skipped}


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k + 2), max(4, 0.45 * k + 1.5)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(pred: dict, classes: list[str], paths: list[str], out_dir: str | Path) -> dict:
    """Write metrics.json, predictions.csv and confusion_matrix.png into ``out_dir``; return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs, target = pred["probs"], pred["target"]
    k = len(classes)
    order = np.argsort(-probs, axis=1)
    top1 = float((order[:, 0] == target).mean())
    top5 = float((order[:, : min(5, k)] == target[:, None]).any(1).mean())
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (target, order[:, 0]), 1)
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    metrics = {"top1": top1, "top5": top5, "num_images": int(len(target)), "skipped_images": pred["skipped"],
               "per_class_top1": per_class}
    if pred.get("skipped_items"):  # which files, for the user to repair: path<TAB>reason
        listing = out / "skipped_images.txt"
        listing.write_text("".join(f"{p}\t{r}\n" for p, r in pred["skipped_items"]))
        metrics["skipped_list"] = str(listing)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "target", "pred", "prob", "correct"])
        for i, t, o, p in zip(pred["index"], target, order[:, 0], probs):
            w.writerow([paths[i], classes[t], classes[o], f"{p[o]:.4f}", int(o == t)])
    plot_confusion(cm, classes, out / "confusion_matrix.png")
    return metrics


def write_viz(model: nn.Module, dataset, num_images: int, out_dir: str | Path, *, mean, std,
              cams=("gradcam",), per_layer: bool = False, class_names: list[str] | None = None) -> Path | None:
    """zoo.viz pictures (CAM and attention overlays, ``index.html``) for the first ``num_images``
    decodable images of ``dataset`` (an :class:`zoo.data.ImageFolder` with its eval transform).

    Returns:
        The path of ``index.html``, or None when ``num_images`` is 0.
    """
    from ..viz.plot import visualize

    if num_images <= 0:
        return None
    items = [it for it in (dataset[i] for i in range(min(num_images, len(dataset)))) if it is not None]
    if not items:
        return None
    x = torch.stack([it["image"] for it in items]).float()
    x = x[:, : getattr(model, "in_chans", x.shape[1])]
    root = Path(dataset.samples[0][0]).parents[1]
    names = [Path(dataset.samples[it["index"]][0]).relative_to(root).as_posix() for it in items]
    model.cpu().eval()
    visualize(model, x, out_dir, names=names, mean=mean, std=std, cam_methods=list(cams),
              class_names=class_names, per_layer=per_layer)
    return Path(out_dir) / "index.html"
