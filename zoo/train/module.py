"""The one LightningModule: image classification with any registered zoo model.

Loss (label smoothing, or timm Mixup/CutMix with soft targets), AdamW/SGD with weight decay off for
the model's ``no_weight_decay()`` names and all 1-d parameters, per-step linear warm-up then cosine
(or step) decay, an EMA of the weights evaluated next to the model, top-1/top-5 metrics, and a
loud stop on a non-finite loss.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import zoo

__all__ = ["ClassificationModule", "param_groups", "lr_lambda"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and (wd 0) 1-d params plus ``model.no_weight_decay()`` names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(step: int, *, total: int, warmup: int, warmup_factor: float, min_factor: float,
              name: str = "cosine", step_every: int = 0, gamma: float = 0.1) -> float:
    """LR multiplier at optimizer step ``step``: linear warm-up, then cosine to ``min_factor`` or step decay."""
    if step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup
    if name == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "step":
        return gamma ** ((step - warmup) // max(1, step_every))
    if name == "constant":
        return 1.0
    raise ValueError(f"scheduler.name must be cosine, step or constant, got {name!r}.")


class ClassificationModule(L.LightningModule):
    """Train and validate ``zoo.create(model_name, ...)``.

    Args:
        model_name: registered name (``zoo.list_models()``).
        num_classes: classifier outputs (the dataset's class count).
        model_kwargs: architecture kwargs for the entry point.
        pretrained: checkpoint path to initialise from, or None.
        class_names: label order; saved into every checkpoint.
        data_config: preprocessing (img_size, mean, std, ...); saved for evaluation.
        optimizer: ``{name: adamw|sgd, lr, weight_decay, betas | momentum, nesterov, lr_base_batch}``;
            with ``lr_base_batch`` the lr is scaled by global batch / ``lr_base_batch``.
        scheduler: ``{name: cosine|step|constant, warmup_epochs, warmup_lr_factor, min_lr_factor,
            step_epochs, gamma}``.
        label_smoothing: for the hard-label loss (and Mixup's soft targets).
        mixup: timm ``Mixup`` kwargs (``mixup_alpha``, ``cutmix_alpha``, ``prob``, ...) or None.
        ema: ``{decay, ...}`` (timm ``ModelEmaV3`` kwargs) or None.
        grad_checkpointing: call the model's ``set_grad_checkpointing``.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        *,
        model_kwargs: Mapping | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        data_config: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        label_smoothing: float = 0.1,
        mixup: Mapping | None = None,
        ema: Mapping | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = zoo.create(model_name, pretrained=pretrained or False, num_classes=num_classes,
                                **dict(model_kwargs or {}))
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.opt_cfg = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, **dict(optimizer or {})}
        self.sched_cfg = {"name": "cosine", "warmup_epochs": 0, **dict(scheduler or {})}
        self.mixup = None
        if mixup and (mixup.get("mixup_alpha", 0) > 0 or mixup.get("cutmix_alpha", 0) > 0):
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup = Mixup(**dict(mixup), label_smoothing=label_smoothing, num_classes=num_classes)
            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # Kept out of the module tree so the checkpoint's state_dict is the plain model's (loadable by
        # zoo.create(pretrained=...)); its weights travel in checkpoint["ema_state_dict"].
        self._ema = [self._make_ema(ema)] if ema else []
        k = min(5, num_classes)
        self.val_top1, self.val_top5 = MulticlassAccuracy(num_classes, top_k=1, average="micro"), \
            MulticlassAccuracy(num_classes, top_k=k, average="micro")
        self.val_top1_ema = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_loss = MeanMetric()
        self.skipped = {"train": 0, "val": 0}
        self.decoded = {"train": 0, "val": 0}  # images used this epoch: 0 with skips means nothing readable
        self.skipped_examples = {"train": [], "val": []}

    def _make_ema(self, cfg: Mapping):
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, **dict(cfg))

    @property
    def ema(self):
        return self._ema[0] if self._ema else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_train_start(self) -> None:
        # Lightning restores loader positions only if the train loader is built after the loops are
        # restored; configure_optimizers' estimated_stepping_batches builds it earlier. Re-apply here
        # (idempotent, and iteration has not started: ResumableLoader iterates lazily).
        states, self._loader_states = getattr(self, "_loader_states", None), None
        loader = self.trainer.train_dataloader
        if states and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(states[0])

    def training_step(self, batch: dict, batch_idx: int):
        self._count("train", batch)
        x, y = batch["image"], batch["target"]
        if len(x) == 0:
            return None
        target = y
        if self.mixup is not None:
            if len(x) % 2:  # timm Mixup pairs samples; a skipped image can leave the batch odd
                x, y = x[:-1], y[:-1]
            x, target = self.mixup(x, y)
        logits = self.model(x)
        loss = self.train_loss(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); stopping. Lower the learning rate, enable gradient clipping, "
                "or train in precision=32 to find the cause."
            )
        if self.mixup is None:
            self.train_top1(logits.detach(), y)
            self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def on_train_epoch_end(self) -> None:
        self._require_images("train")
        self._report_skipped("train")

    def _count(self, split: str, batch: dict) -> None:
        self.skipped[split] += int(batch["skipped"])
        self.decoded[split] += len(batch["image"])
        ex = self.skipped_examples[split]
        ex += [p for p, _ in batch.get("skipped_items", [])][: 3 - len(ex)]

    def _require_images(self, split: str, reset: bool = True) -> None:
        """Stop when every image of this epoch's ``split`` was skipped: metrics (top-1 0, NaN loss) and a
        "best" checkpoint computed from no image at all would be wrong, not just poor."""
        counts = torch.tensor([self.decoded[split], self.skipped[split]], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        decoded, skipped = (int(c) for c in counts.tolist())
        examples = self.skipped_examples[split]
        if reset:
            self.decoded[split], self.skipped_examples[split] = 0, []
        if decoded == 0 and skipped > 0:
            name = {"train": "training", "val": "validation"}[split]
            raise RuntimeError(
                f"No readable {name} image in epoch {self.current_epoch}: all {skipped} images read were skipped "
                f"(undecodable, truncated or over data.max_image_pixels), e.g. {', '.join(examples) or '?'}. "
                "Repair or remove those files, or point data.root (and data.train_split / data.val_split) "
                "at the right folder.")

    def _report_skipped(self, split: str) -> None:
        n = torch.tensor(float(self.skipped[split]), device=self.device)
        self.skipped[split] = 0
        total = int(self.trainer.strategy.reduce(n, reduce_op="sum").item()) if self.trainer.world_size > 1 else int(n)
        self.log(f"{split}/skipped_images", float(total), on_step=False, on_epoch=True, reduce_fx="max")
        if total:
            warnings.warn(f"Epoch {self.current_epoch}: skipped {total} undecodable {split} image(s).", stacklevel=2)

    # --- validation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:  # a training epoch with nothing readable: stop before "best"
            self._require_images("train", reset=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._count("val", batch)
        x, y = batch["image"], batch["target"]
        if len(x) == 0:
            return
        logits = self.model(x)
        self.val_loss.update(nn.functional.cross_entropy(logits.float(), y), weight=len(x))
        self.val_top1.update(logits, y)
        self.val_top5.update(logits, y)
        if self.ema is not None:
            self.val_top1_ema.update(self.ema.module(x), y)

    def on_validation_epoch_end(self) -> None:
        self._require_images("val")
        self.log("val/loss", self.val_loss.compute(), prog_bar=False, sync_dist=False)
        self.log("val/top1", self.val_top1.compute(), prog_bar=True)
        self.log("val/top5", self.val_top5.compute())
        if self.ema is not None:
            self.log("val/top1_ema", self.val_top1_ema.compute(), prog_bar=True)
        for m in (self.val_loss, self.val_top1, self.val_top5, self.val_top1_ema):
            m.reset()
        self._report_skipped("val")

    # --- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = dict(self.opt_cfg)
        name, lr, wd = cfg.pop("name"), float(cfg.pop("lr")), float(cfg.pop("weight_decay"))
        base = cfg.pop("lr_base_batch", None)
        if base:  # linear scaling rule (Goyal et al.): lr is quoted for a global batch of ``base``
            dm = self.trainer.datamodule
            lr *= dm.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches / base
        groups = param_groups(self.model, wd)
        if name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.pop("betas", (0.9, 0.999))), eps=cfg.pop("eps", 1e-8))
        elif name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.pop("momentum", 0.9), nesterov=cfg.pop("nesterov", False))
        else:
            raise ValueError(f"optimizer.name must be adamw or sgd, got {name!r}.")
        for k in ("betas", "eps", "momentum", "nesterov"):
            cfg.pop(k, None)
        if cfg:
            raise TypeError(f"Unknown optimizer options {sorted(cfg)}.")
        s = self.sched_cfg
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_lambda(
            step, total=total, warmup=int(s.get("warmup_epochs", 0) * per_epoch),
            warmup_factor=s.get("warmup_lr_factor", 1e-3), min_factor=s.get("min_lr_factor", 1e-2),
            name=s["name"], step_every=int(s.get("step_epochs", 30) * per_epoch), gamma=s.get("gamma", 0.1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hp = self.hparams
        checkpoint["zoo"] = {"model_name": hp.model_name, "num_classes": hp.num_classes,
                             "class_names": self.class_names, "data_config": dict(hp.data_config or {}),
                             "model_kwargs": dict(hp.model_kwargs or {})}
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loader_states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        meta = checkpoint.get("zoo")
        if meta is None:
            raise ValueError("This checkpoint was not written by zoo's train.py (no 'zoo' entry); "
                             "to initialise weights from it use pretrained=<path> instead of ckpt_path.")
        hp = self.hparams
        mine = (hp.model_name, hp.num_classes, dict(hp.model_kwargs or {}))
        theirs = (meta["model_name"], meta["num_classes"], meta.get("model_kwargs", {}))
        if mine != theirs:
            raise ValueError(
                f"Checkpoint is for model {theirs[0]!r} ({theirs[1]} classes, kwargs {theirs[2]}) but this run "
                f"builds {mine[0]!r} ({mine[1]} classes, kwargs {mine[2]}). Use the same model= and data=, "
                "or pass the file as pretrained= to fine-tune from it."
            )
        if self.ema is not None and "ema_state_dict" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state_dict"])
