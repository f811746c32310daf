"""Knowledge distillation: the losses, the frozen teacher, and train.py runs with a teacher."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import compose

from zoo.compress.distill import DistillLoss, check_distill_config, load_teacher


def _train():
    import train

    return train.train


class Const(nn.Module):
    """A teacher that returns fixed logits, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[: len(x)]


def test_soft_loss_is_hinton_kl_times_tau_squared():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    x = torch.zeros(4, 1)
    loss = DistillLoss(Const(t), F.cross_entropy, type="soft", alpha=0.3, tau=2.0)(x, s, y)
    p_t = F.softmax(t / 2, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 2, -1))).sum(-1).mean()
    assert torch.allclose(loss, 0.7 * F.cross_entropy(s, y) + 0.3 * 4.0 * kl, atol=1e-6)
    # the student equal to the teacher: the soft term vanishes
    same = DistillLoss(Const(s), F.cross_entropy, type="soft", alpha=0.5)(x, s, y)
    assert torch.allclose(same, 0.5 * F.cross_entropy(s, y), atol=1e-6)


def test_hard_loss_uses_the_teachers_argmax_and_deit_heads_split():
    torch.manual_seed(0)
    cls, dist, t = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    y, x = torch.tensor([1, 1, 1]), torch.zeros(3, 1)
    loss = DistillLoss(Const(t), F.cross_entropy, type="hard", alpha=0.5)
    assert torch.allclose(loss(x, cls, y), 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(cls, t.argmax(-1)))
    # DeiT: class head on the labels, distillation head on the teacher
    assert torch.allclose(loss(x, (cls, dist), y), 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t.argmax(-1)))
    # alpha=0: the labels alone
    assert torch.allclose(DistillLoss(Const(t), F.cross_entropy, alpha=0.0)(x, cls, y), F.cross_entropy(cls, y))


def test_teacher_gets_no_gradient():
    teacher = nn.Linear(3, 4)
    loss = DistillLoss(load_teacher_like(teacher), F.cross_entropy)
    s = torch.randn(2, 4, requires_grad=True)
    loss(torch.randn(2, 3), s, torch.tensor([0, 1])).backward()
    assert s.grad is not None and all(p.grad is None for p in teacher.parameters())


def load_teacher_like(m):
    from zoo.compress.distill import _freeze

    return _freeze(m)


@pytest.mark.parametrize("bad, match", [
    ({"teacher": "resnet18", "type": "warm"}, "distill.type must be one of"),
    ({"teacher": "resnet18", "alpha": 1.5}, "must be in \\[0, 1\\]"),
    ({"teacher": "resnet18", "tau": 0}, "must be > 0"),
    ({"teacher": "resnet18", "teachr_ckpt": "x"}, "unknown key"),
])
def test_bad_distill_config_says_what_to_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        check_distill_config(bad)


def test_no_teacher_means_no_distillation():
    assert check_distill_config(None) is None and check_distill_config({"teacher": None, "type": "soft"}) is None


def test_teacher_without_weights_or_unknown_is_refused():
    with pytest.raises(ValueError, match="has no weights"):
        load_teacher("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="Did you mean"):
        load_teacher("resnet81", num_classes=10, teacher_pretrained=True)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A resnet18 teacher trained for two batches on digits (small: kept in tmp)."""
    from conftest import SHRINK

    out = tmp_path_factory.mktemp("teacher")
    summary = _train()(compose("train", [*SHRINK, "model=resnet18", "logger=[]"], out))
    return summary["checkpoints"]["last"]


def _student(out, *overrides):
    from conftest import SHRINK

    return compose("train", [*SHRINK, "model=resnet18", "logger=[]", "module.ema=null", *overrides], out)


def test_train_with_a_checkpoint_teacher(teacher_ckpt, tmp_path):
    before = torch.load(teacher_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    seen = {}

    import lightning as L

    class Spy(L.Callback):
        def on_train_end(self, trainer, module):
            seen["teacher"] = module.distill.teacher
            seen["opt"] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    summary = _train()(_student(tmp_path, f"distill.teacher={teacher_ckpt}", "distill.type=soft"), callbacks=[Spy()])
    teacher = seen["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not seen["opt"] & {id(p) for p in teacher.parameters()}  # not optimised
    after = {f"model.{k}": v for k, v in teacher.state_dict().items()}
    assert all(torch.equal(after[k], before[k]) for k in before)  # unchanged by training
    ck = torch.load(summary["checkpoints"]["last"], map_location="cpu", weights_only=True)
    assert all(k.startswith("model.") for k in ck["state_dict"])  # the student alone
    assert len(ck["state_dict"]) == len(before)  # same architecture: the teacher's weights are not in it
    assert ck["hyper_parameters"]["distill"]["teacher"] == str(teacher_ckpt)  # only a reference


def test_train_deit_student_with_a_named_teacher_hard_and_mixup(teacher_ckpt, tmp_path):
    summary = _train()(_student(
        tmp_path, "model=deit_t_16_distilled", "+model.kwargs.embed_dim=32", "+model.kwargs.depth=2",
        "+model.kwargs.num_heads=2", "distill.teacher=resnet18", f"distill.teacher_ckpt={teacher_ckpt}",
        "distill.type=hard", "distill.alpha=0.5", "+module.mixup={mixup_alpha: 0.8, cutmix_alpha: 1.0}"))
    assert summary["global_step"] == 2


def test_teacher_of_another_dataset_is_refused(teacher_ckpt, tmp_path):
    with pytest.raises(ValueError, match="teacher predicts 10 classes but the student 5"):
        load_teacher(teacher_ckpt, num_classes=5)
