"""The one LightningModule: image classification with any registered zoo model.

Loss (label smoothing, or timm Mixup/CutMix with soft targets), any optimizer and scheduler given as
configs (``_target_`` + ``_partial_``, instantiated here so checkpoints hold plain values) with weight
decay off for the model's ``no_weight_decay()`` names and all 1-d parameters, an EMA of the weights
evaluated next to the model, top-1/top-5 metrics, and a loud stop on a non-finite loss.
"""
from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import zoo
from zoo.checkpoint import check_matches, restore_ema, validate

__all__ = ["ClassificationModule", "build_model", "param_groups"]


def build_model(name: str, *, num_classes: int | None = None, kwargs: Mapping | None = None,
                pretrained: bool | str | None = None) -> nn.Module:
    """``zoo.create`` for a config node ``{_target_: zoo.train.build_model, name, num_classes, kwargs}``.

    Architecture arguments sit under ``kwargs`` (``+model.kwargs.depth=6``) so they never collide
    with the node's own keys; ``num_classes=None`` keeps the entry point's default.
    """
    extra = {} if num_classes is None else {"num_classes": num_classes}
    return zoo.create(name, pretrained=pretrained or False, **extra, **dict(kwargs or {}))


def param_groups(model: nn.Module, weight_decay: float | None = None) -> list[dict]:
    """Two groups: decayed weights, and (wd 0) 1-d params plus ``model.no_weight_decay()`` names.

    With ``weight_decay=None`` the first group takes the optimizer's own ``weight_decay`` setting.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    first = {"params": decay} if weight_decay is None else {"params": decay, "weight_decay": weight_decay}
    return [first, {"params": no_decay, "weight_decay": 0.0}]


def _plain(cfg):
    """DictConfig / ListConfig -> dicts and lists (resolved): checkpoints must load with weights_only=True."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def _partial(cfg: Mapping, what: str):
    """Instantiate a ``_partial_: true`` config; a clear error when it is not one."""
    from hydra.utils import instantiate

    if not isinstance(cfg, Mapping) or "_target_" not in cfg or not cfg.get("_partial_"):
        raise ValueError(f"module.{what} must be a config with _target_ and _partial_: true (the module passes "
                         f"the {'parameter groups' if what == 'optimizer' else 'optimizer'} in), got {cfg!r}.")
    return instantiate(cfg, _convert_="all")  # plain lists in the optimizer's state, not ListConfig


class ClassificationModule(L.LightningModule):
    """Train and validate the model a config node builds (``zoo.train.build_model`` by default).

    The model, optimizer and scheduler arrive as configs (what Hydra's ``instantiate`` takes) and are
    built here: the hyperparameters Lightning saves stay plain values, so a checkpoint loads with
    ``weights_only=True``, records its recipe, and ``load_from_checkpoint`` needs no arguments.

    Args:
        model: ``{_target_, name, kwargs, ...}``: called with ``num_classes`` and ``pretrained``; ``name``
            (a ``zoo.list_models()`` name) and ``kwargs`` are recorded for eval.py and resume checks.
        num_classes: classifier outputs (the dataset's class count).
        optimizer: a partial, e.g. ``{_target_: torch.optim.AdamW, _partial_: true, lr: 1e-3,
            weight_decay: 0.05}``; any ``torch.optim`` or ``timm.optim`` class. It is called with two
            parameter groups (see :func:`param_groups`).
        scheduler: a partial called with the optimizer, plus ``total_steps`` / ``steps_per_epoch`` when
            it takes them (:mod:`zoo.train.schedules`); any ``torch.optim.lr_scheduler`` class or timm
            scheduler; None for a constant lr.
        scheduler_interval: ``step`` or ``epoch``: when Lightning steps a torch scheduler. timm
            schedulers are driven as timm's train loop does (``step_update`` every optimizer step,
            ``step`` every epoch) and want ``step``.
        lr_base_batch: scale every group's lr by global batch / ``lr_base_batch`` (linear scaling
            rule, Goyal et al.); None: lr as given.
        pretrained: checkpoint path (or catalog tag) to initialise the model from, or None.
        class_names: label order; saved into every checkpoint.
        data_config: preprocessing (img_size, mean, std, ...); saved for evaluation.
        label_smoothing: for the hard-label loss (and Mixup's soft targets).
        mixup: timm ``Mixup`` kwargs (``mixup_alpha``, ``cutmix_alpha``, ``prob``, ...) or None.
        ema: ``{decay, ...}`` (timm ``ModelEmaV3`` kwargs) or None.
        grad_checkpointing: call the model's ``set_grad_checkpointing``.
        distill: knowledge distillation (:mod:`zoo.compress.distill`): ``{teacher, teacher_ckpt,
            teacher_pretrained, type: soft|hard, alpha, tau}``; None or ``teacher: null``: none. The
            teacher is frozen, in eval mode and kept out of the module tree (not optimised, not in the
            checkpoint's ``state_dict``; the checkpoint records only this config).

    A model with a distillation head (DeiT distilled) is switched to ``set_distilled_training``: a
    training forward gives ``(class_logits, dist_logits)`` and the loss is the mean of the two heads'
    losses on the labels (hard distillation with the labels as teacher), so both heads learn, and
    the mean of the two that evaluation uses is of two trained heads. Official DeiT without a
    teacher trains the class head only.
    """

    def __init__(
        self,
        model: Mapping,
        num_classes: int,
        *,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "step",
        lr_base_batch: int | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        data_config: Mapping | None = None,
        label_smoothing: float = 0.1,
        mixup: Mapping | None = None,
        ema: Mapping | None = None,
        grad_checkpointing: bool = False,
        distill: Mapping | None = None,
    ):
        super().__init__()
        # Plain containers before save_hyperparameters (it reads these locals): a pickled DictConfig
        # would make every checkpoint unloadable with weights_only=True.
        model, optimizer, scheduler = _plain(model), _plain(optimizer), _plain(scheduler)
        data_config, mixup, ema, class_names = _plain(data_config), _plain(mixup), _plain(ema), _plain(class_names)
        from zoo.compress.distill import DistillLoss, check_distill_config, load_teacher

        distill = check_distill_config(_plain(distill))  # before any model is built: a typo fails at once
        if not isinstance(model, Mapping) or "_target_" not in model or "name" not in model:
            raise ValueError("model must be a config with _target_ and name, e.g. {'_target_': "
                             f"'zoo.train.build_model', 'name': 'resnet18', 'kwargs': {{}}}}, got {model!r}.")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}.")
        _partial(optimizer, "optimizer")  # fail at construction, not at the first fit
        if scheduler is not None:
            _partial(scheduler, "scheduler")
        self.save_hyperparameters()
        from hydra.utils import instantiate

        self.model = instantiate(model, num_classes=num_classes, pretrained=pretrained, _convert_="all")
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if hasattr(self.model, "set_distilled_training"):
            self.model.set_distilled_training(True)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
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
        self.distill = None
        if distill is not None:  # the teacher lives in DistillLoss, outside the module tree, like the EMA
            teacher = load_teacher(distill["teacher"], num_classes=num_classes, teacher_ckpt=distill.get("teacher_ckpt"),
                                   teacher_pretrained=distill.get("teacher_pretrained"))
            self.distill = DistillLoss(teacher, self.train_loss, type=distill["type"], alpha=distill["alpha"],
                                       tau=distill["tau"])
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
        if self.distill is not None:
            self.distill.teacher.to(self.device)

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
        if self.distill is not None:
            loss = self.distill(x, logits, target)
        elif isinstance(logits, tuple):  # class and distillation heads, no teacher: one label loss each, averaged
            loss = sum(self.train_loss(t, target) for t in logits) / len(logits)
        else:
            loss = self.train_loss(logits, target)
        if isinstance(logits, tuple):
            logits = sum(logits) / len(logits)  # what evaluation returns, for the train metric
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
        self._step_timm_schedulers_per_epoch()
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
        hp = self.hparams
        opt = _partial(hp.optimizer, "optimizer")(param_groups(self.model))
        if hp.lr_base_batch:  # linear scaling rule (Goyal et al.): lr is quoted for a global batch of lr_base_batch
            t = self.trainer
            scale = t.datamodule.batch_size * t.world_size * t.accumulate_grad_batches / hp.lr_base_batch
            for group in opt.param_groups:  # before the scheduler records each group's initial lr
                group["lr"] *= scale
        if hp.scheduler is None:
            return opt
        make = _partial(hp.scheduler, "scheduler")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        per_epoch = (math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches)
                     else total / max(1, self.trainer.max_epochs or 1))
        takes = inspect.signature(make).parameters
        given = {k: v for k, v in (("total_steps", total), ("steps_per_epoch", max(1, per_epoch))) if k in takes}
        sched = make(opt, **given)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.scheduler_interval}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if hasattr(scheduler, "step_update"):  # a timm scheduler: per optimizer step here, per epoch below
            scheduler.step_update(num_updates=self.global_step, metric=metric)
        else:
            super().lr_scheduler_step(scheduler, metric)

    def _step_timm_schedulers_per_epoch(self) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "step_update"):
                config.scheduler.step(epoch=self.current_epoch + 1)

    # --- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hp = self.hparams
        checkpoint["zoo"] = {"model_name": hp.model["name"], "num_classes": hp.num_classes,
                             "class_names": self.class_names, "data_config": dict(hp.data_config or {}),
                             "model_kwargs": dict(hp.model.get("kwargs") or {})}
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loader_states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        # The one reader's checks (zoo.checkpoint): a foreign file or another model is a clear error.
        meta = validate(checkpoint, "ckpt_path")
        hp = self.hparams
        check_matches(meta, model_name=hp.model["name"], num_classes=hp.num_classes,
                      model_kwargs=dict(hp.model.get("kwargs") or {}), source="ckpt_path")
        if self.ema is not None:
            restore_ema(self.ema, checkpoint, "ckpt_path")
