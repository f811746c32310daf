"""Knowledge distillation in the training loop.

Two objectives, as ``distill.type`` in ``configs/train.yaml`` selects:

* ``soft``: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531):
  KL divergence between the teacher's and the student's softened distributions,
  ``tau**2 * KL(softmax(t / tau) || softmax(s / tau))``; the ``tau**2`` keeps the gradient scale of
  the soft term independent of ``tau``, as the paper notes.
* ``hard``: Touvron et al., DeiT (arXiv:2012.12877), section 5.1: cross-entropy against the teacher's
  argmax, which DeiT found better than soft distillation for a ViT student.

The total is ``(1 - alpha) * base + alpha * distill``, where ``base`` is the usual loss on the labels
(label smoothing, or Mixup/CutMix soft targets: the teacher sees the same mixed images). A student with
a distillation head (DeiT distilled: a training forward gives ``(class_logits, dist_logits)``) gets the
label loss on its class head and the teacher's loss on its distillation head, as DeiT trains it.

The teacher is frozen and in eval mode: no gradients, not in the optimizer, not in the student's
checkpoints (the module keeps it outside its module tree; only the ``distill`` config is recorded).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DISTILL_TYPES", "DistillLoss", "load_teacher", "check_distill_config"]

DISTILL_TYPES = ("soft", "hard")
_KEYS = {"teacher", "teacher_ckpt", "teacher_pretrained", "type", "alpha", "tau"}


def check_distill_config(cfg: Mapping | None) -> dict | None:
    """Validate a ``distill`` node; ``None`` (or ``teacher: null``) means no distillation.

    Raises:
        ValueError: an unknown key, type, or an ``alpha``/``tau`` out of range, naming the fix.
    """
    if not cfg or cfg.get("teacher") in (None, ""):
        return None
    cfg = dict(cfg)
    unknown = set(cfg) - _KEYS
    if unknown:
        raise ValueError(f"distill has unknown key(s) {sorted(unknown)}; the keys are {sorted(_KEYS)}.")
    kind = cfg.get("type", "soft")
    if kind not in DISTILL_TYPES:
        raise ValueError(f"distill.type must be one of {list(DISTILL_TYPES)}, got {kind!r}.")
    alpha, tau = float(cfg.get("alpha", 0.5)), float(cfg.get("tau", 1.0))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill.alpha weighs the teacher's loss against the labels' and must be in [0, 1], got {alpha}.")
    if tau <= 0:
        raise ValueError(f"distill.tau is the softmax temperature and must be > 0, got {tau}.")
    return {**cfg, "type": kind, "alpha": alpha, "tau": tau}


def load_teacher(teacher: str, *, num_classes: int, teacher_ckpt: str | None = None,
                 teacher_pretrained: bool | str | None = None) -> nn.Module:
    """Build the frozen teacher.

    Args:
        teacher: a ``zoo.list_models()`` name, or the path of a ``train.py`` checkpoint (its model and
            weights are read by :func:`zoo.checkpoint.load_checkpoint`).
        num_classes: the student's classes; the teacher must predict the same ones.
        teacher_ckpt: with a model name, its weights: a ``train.py`` checkpoint or any file
            ``zoo.create(pretrained=...)`` reads.
        teacher_pretrained: with a model name and no ``teacher_ckpt``: a catalog tag or ``True``.

    Returns:
        The teacher in eval mode with ``requires_grad=False`` everywhere.
    """
    import zoo
    from zoo.registry import get_model_entry
    from zoo.checkpoint import CheckpointError, load_checkpoint, read_checkpoint

    if os.path.exists(str(teacher)):
        model, meta = load_checkpoint(teacher)
        got = meta["num_classes"]
    else:
        get_model_entry(teacher)  # an unknown name raises the registry's "Did you mean" error
        if teacher_ckpt is None and not teacher_pretrained:
            raise ValueError(f"distill.teacher={teacher!r} has no weights: a random teacher teaches nothing. Set "
                             "distill.teacher_ckpt=<train.py checkpoint or weights file> or distill.teacher_pretrained=<tag>.")
        if teacher_ckpt is not None and str(teacher_ckpt).endswith(".ckpt"):
            try:
                ckpt_model = read_checkpoint(teacher_ckpt).meta["model_name"]
            except CheckpointError:
                ckpt_model = None
            if ckpt_model is not None:
                model, meta = load_checkpoint(teacher_ckpt, model_name=teacher)
                got = meta["num_classes"]
                return _freeze(_check_classes(model, got, num_classes))
        model = zoo.create(teacher, num_classes=num_classes, pretrained=teacher_ckpt or teacher_pretrained)
        got = num_classes
    return _freeze(_check_classes(model, got, num_classes))


def _check_classes(model: nn.Module, got: int, want: int) -> nn.Module:
    if got != want:
        raise ValueError(f"The teacher predicts {got} classes but the student {want}: distil from a teacher "
                         "trained on the same dataset (same class folders).")
    return model


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DistillLoss:
    """Label loss mixed with a teacher loss.

    Args:
        teacher: the frozen teacher (:func:`load_teacher`).
        base_loss: the loss on the labels, ``(logits [B, K], target [B] or [B, K]) -> scalar``.
        type: ``"soft"`` (Hinton) or ``"hard"`` (DeiT).
        alpha: weight of the teacher's term, in [0, 1].
        tau: temperature of the soft term.

    ``__call__(x, student_out, target)``: ``x`` the (mixed) input batch ``[B, C, H, W]`` the teacher
    reads, ``student_out`` logits ``[B, K]`` or a ``(class, dist)`` tuple. Returns the scalar loss.
    """

    def __init__(self, teacher: nn.Module, base_loss: Callable, *, type: str = "soft", alpha: float = 0.5,
                 tau: float = 1.0):
        if type not in DISTILL_TYPES:
            raise ValueError(f"type must be one of {list(DISTILL_TYPES)}, got {type!r}.")
        self.teacher, self.base_loss, self.type, self.alpha, self.tau = teacher, base_loss, type, alpha, tau

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # Lightning's train() on the module never reaches it, but a user's might
        return self.teacher(x).float()

    def distill_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.type == "hard":
            return F.cross_entropy(student.float(), teacher.argmax(-1))
        t = self.tau
        return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher / t, -1),
                        reduction="batchmean", log_target=True) * (t * t)

    def __call__(self, x: torch.Tensor, student_out, target: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(x)
        if isinstance(student_out, tuple):  # DeiT: class head on the labels, distillation head on the teacher
            cls, dist = student_out
            return (1 - self.alpha) * self.base_loss(cls, target) + self.alpha * self.distill_term(dist, teacher)
        return (1 - self.alpha) * self.base_loss(student_out, target) + self.alpha * self.distill_term(student_out, teacher)
