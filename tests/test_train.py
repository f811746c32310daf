"""The training loop end to end on the embedded digits: every model, resume, DDP, eval, wandb, failures."""
from __future__ import annotations

import csv
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, compose
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from registry_sets import per_model

import zoo
import zoo.train

# One model per family and attention block stays in the default run; larger variants are slow.
HEAVY = ("*101*", "*152*", "*resnet50", "*resnet34", "*resnext*", "vit_l*", "vit_b*", "vit_s*", "vit_h*", "deit_s*", "deit_b*",
         "swin_b*", "swin_s*", "swin_l*", "swin_v2_b*", "swin_v2_s*")


def _heavy(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in HEAVY)


def _train():
    import train

    return train.train


class SimulatedKill(RuntimeError):
    pass


class IndexRecorder(L.Callback):
    """Records (global_step, dataset indices) of every training batch; can fail at a given step."""

    def __init__(self, fail_at: int | None = None):
        self.seen, self.fail_at = [], fail_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.fail_at:
            raise SimulatedKill(f"killed at step {trainer.global_step}")
        self.seen.append((trainer.global_step, batch["index"].tolist()))


# ----------------------------------------------------------------------------------------- configs
def test_model_group_covers_registry_and_handwritten_yaml_wins(train_cfg):
    names = zoo.list_models()
    assert "cbam_resnet18" in names
    cfg = train_cfg()  # composing registers the nodes; the default model comes from the hand-written file
    repo = ConfigStore.instance().repo["model"]
    handwritten = {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    assert "cbam_resnet18" in handwritten
    for name in names:  # a generated node, unless a yaml exists (then no node: the yaml alone is used)
        assert (f"{name}.yaml" in repo) != (name in handwritten), name
    assert cfg.model.name == "cbam_resnet18" and cfg.model.kwargs.img_size == cfg.data.img_size
    other = next(n for n in names if n not in handwritten)
    assert train_cfg(f"model={other}").model.name == other


def test_model_node_is_an_instantiation_with_kwargs(train_cfg):
    cfg = train_cfg("model=vit_t_16", "+model.kwargs.patch_size=8", "+model.kwargs.depth=2")
    assert cfg.model._target_ == "zoo.train.build_model"
    net = instantiate(cfg.model, num_classes=10)
    assert net.patch_size == (8, 8) and len(net.blocks) == 2 and net.head.out_features == 10


RECIPES = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_experiment_configs_compose(tmp_path, name):
    cfg = compose("train", [f"experiment={name}"], tmp_path)
    assert cfg.model.name in zoo.list_models() and OmegaConf.is_missing(cfg.data, "root")
    assert get_object(cfg.model._target_) is zoo.train.build_model
    for part in ("optimizer", "scheduler"):  # partials of importable callables, not names to dispatch on
        assert cfg.module[part]._partial_ and callable(get_object(cfg.module[part]._target_)), part
    assert cfg.trainer.max_epochs >= 90


def test_swin_recipe_values(tmp_path):
    m = compose("train", ["experiment=swin_t_imagenet"], tmp_path).module
    assert m.optimizer._target_ == "torch.optim.AdamW" and m.scheduler._target_.endswith("warmup_cosine")
    assert (m.optimizer.lr, m.lr_base_batch, m.optimizer.weight_decay) == (1e-3, 1024, 0.05)
    assert (m.scheduler.warmup_epochs, m.label_smoothing, m.mixup.mixup_alpha, m.mixup.cutmix_alpha) == (20, 0.1, 0.8, 1.0)


class Captured(L.Callback):
    """Keeps the module, optimizer and scheduler config of the run; records the lr of every batch."""

    def __init__(self):
        self.lrs = []

    def on_train_start(self, trainer, pl_module):
        self.module, self.optimizer = pl_module, trainer.optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0] if trainer.lr_scheduler_configs else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("name", RECIPES)
def test_experiment_recipe_trains_one_step(train_cfg, tmp_path, name):
    """Each recipe's model, optimizer, scheduler, lr scaling, loss, mixup and EMA settings, on digits."""
    recipe = compose("train", [f"experiment={name}"], tmp_path / "recipe")
    cap = Captured()
    summary = _train()(train_cfg(f"experiment={name}", "data=digits", "data.img_size=32", "trainer.accelerator=cpu",
                                 "trainer.limit_train_batches=1", "logger=[]"), callbacks=[cap])
    assert summary["global_step"] == 1
    want, opt, module = recipe.module, cap.optimizer, cap.module
    assert module.hparams.model["name"] == recipe.model.name
    assert {k: v for k, v in module.hparams.model["kwargs"].items() if k != "img_size"} == \
        {k: v for k, v in recipe.model.kwargs.items() if k != "img_size"}
    assert type(opt) is get_object(want.optimizer._target_)
    batch = 8  # conftest's SHRINK, one process: the recipe's lr is scaled by 8 / lr_base_batch
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(want.optimizer.lr * batch / want.lr_base_batch)
    for k, v in want.optimizer.items():
        if k not in ("_target_", "_partial_", "lr"):
            assert opt.defaults[k] == (tuple(v) if OmegaConf.is_list(v) else v), k
    assert opt.param_groups[1]["weight_decay"] == 0.0
    target = get_object(want.scheduler._target_)
    assert isinstance(cap.scheduler.scheduler, target if isinstance(target, type) else torch.optim.lr_scheduler.LambdaLR)
    assert cap.scheduler.interval == want.scheduler_interval
    assert (module.mixup is not None) == bool(want.mixup) and (module.ema is not None) == bool(want.ema)
    if not want.mixup:
        assert module.train_loss.label_smoothing == want.label_smoothing
    # the checkpoint holds the recipe as plain values
    ckpt = torch.load(summary["checkpoints"]["last"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["optimizer"] == OmegaConf.to_container(want.optimizer)


# ------------------------------------------------------------------------------ optimizer, schedule
@pytest.mark.parametrize("target", ["torch.optim.SGD", "torch.optim.RMSprop", "timm.optim.Lamb"])
def test_any_optimizer_is_one_config_line(train_cfg, target):
    cap = Captured()
    summary = _train()(train_cfg("model=resnet18", f"module.optimizer._target_={target}", "+trainer.fast_dev_run=1",
                                 "logger=[]", "module.ema=null"), callbacks=[cap])
    assert summary["global_step"] == 1 and type(cap.optimizer) is get_object(target)
    decay, no_decay = cap.optimizer.param_groups  # weight decay off for norms and biases
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert decay["params"] and no_decay["params"]


@pytest.mark.parametrize("choice", ["module/scheduler=warmup_step", "~module/scheduler"])
def test_scheduler_group_choices(train_cfg, choice):
    cap = Captured()
    _train()(train_cfg("model=resnet18", choice, "+trainer.fast_dev_run=1", "logger=[]", "module.ema=null"),
             callbacks=[cap])
    if choice.startswith("~"):  # no scheduler: the configured lr throughout
        assert cap.scheduler is None and cap.lrs == [3e-3]
    else:
        assert isinstance(cap.scheduler.scheduler, torch.optim.lr_scheduler.LambdaLR) and cap.scheduler.interval == "step"


def test_optimizer_config_must_be_a_partial(train_cfg):
    with pytest.raises(InstantiationException, match="module.optimizer must be a config with _target_ and _partial_: true"):
        _train()(train_cfg("model=resnet18", "module.optimizer._partial_=false", "logger=[]"))


def test_schedules_warm_up_then_decay():
    from zoo.train.schedules import warmup_cosine, warmup_step

    def lrs(make, n):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, out = make(opt), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    cos = lrs(lambda o: warmup_cosine(o, total_steps=10, steps_per_epoch=2, warmup_epochs=1,
                                      warmup_lr_factor=0.1, min_lr_factor=0.01), 11)
    assert cos[:3] == pytest.approx([0.1, 0.55, 1.0]) and cos[10] == pytest.approx(0.01)
    assert cos[6] == pytest.approx(0.01 + 0.99 * 0.5) and all(a > b for a, b in zip(cos[2:], cos[3:]))
    step = lrs(lambda o: warmup_step(o, steps_per_epoch=2, step_epochs=1, gamma=0.5, warmup_epochs=1,
                                     warmup_lr_factor=0.5), 7)
    assert step == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.5, 0.5, 0.25])


TIMM_COSINE = ["~module/scheduler", "+module.scheduler._target_=timm.scheduler.CosineLRScheduler",
               "+module.scheduler._partial_=true", "+module.scheduler.warmup_t=1", "+module.scheduler.warmup_lr_init=1e-4"]


@pytest.mark.parametrize("overrides", [
    pytest.param(["+module.scheduler.t_initial=2"], id="timm-epochs"),
    pytest.param(["+module.scheduler.t_initial=4", "+module.scheduler.t_in_epochs=false"], id="timm-updates"),
])
def test_timm_scheduler_is_driven_like_timms_train_loop(train_cfg, overrides):
    from timm.scheduler import CosineLRScheduler

    cap = Captured()
    cfg = train_cfg("model=resnet18", *TIMM_COSINE, *overrides, "trainer.max_epochs=2", "logger=[]", "module.ema=null")
    _train()(cfg, callbacks=[cap])
    assert isinstance(cap.scheduler.scheduler, CosineLRScheduler)
    # the same scheduler stepped as timm's train.py does: step_update per update, step per epoch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.module.optimizer.lr)
    kw = {k: v for k, v in OmegaConf.to_container(cfg.module.scheduler).items() if not k.startswith("_")}
    ref, want, updates = CosineLRScheduler(opt, **kw), [], 0
    for epoch in range(2):
        for _ in range(2):
            want.append(opt.param_groups[0]["lr"])
            updates += 1
            ref.step_update(num_updates=updates)
        ref.step(epoch + 1)
    assert cap.lrs == pytest.approx(want) and len(set(want)) > 1


# ----------------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name", per_model(zoo.list_models(), slow_if=_heavy))
def test_one_batch_every_model(train_cfg, name):
    cfg = train_cfg(f"model={name}", "+trainer.fast_dev_run=1", "logger=[]", "module.ema=null")
    summary = _train()(cfg)
    assert summary["global_step"] == 1


# -------------------------------------------------------------------------------- default run
def test_run_dir_layout_and_summary(train_cfg, tmp_path):
    summary = _train()(train_cfg("model=resnet18"))
    ck = summary["checkpoints"]
    assert Path(ck["last"]) == tmp_path / "checkpoints" / "last.ckpt" and Path(ck["best"]).is_file()
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    final = summary["final"]
    assert {"val/top1", "val/top5", "val/top1_ema", "train/loss_epoch"} <= set(final)
    assert summary["epochs"] == 1 and summary["train_images_per_s"] > 0
    ckpt = torch.load(ck["last"], map_location="cpu", weights_only=True)
    assert ckpt["zoo"]["class_names"] == [str(i) for i in range(10)] and "ema_state_dict" in ckpt
    # the state dict is the plain model's, so zoo.create can initialise from a train.py checkpoint
    zoo.create("resnet18", pretrained=ck["last"], num_classes=10, img_size=32)
    # and the module comes back from its own hyperparameters, all plain values
    back = zoo.train.ClassificationModule.load_from_checkpoint(ck["last"], weights_only=True)
    assert back.hparams.model["name"] == "resnet18" and back.hparams.optimizer["_target_"] == "torch.optim.AdamW"


def test_resume_continues_from_saved_step_with_same_data_order(train_cfg, tmp_path):
    common = ["model=resnet18", "trainer.max_epochs=2", "trainer.limit_train_batches=4", "logger=[]",
              "callbacks.model_checkpoint_steps.every_n_train_steps=3"]
    full = IndexRecorder()
    _train()(train_cfg(*common, f"paths.output_dir={tmp_path}/full"), callbacks=[full])
    killed = IndexRecorder(fail_at=7)
    with pytest.raises(SimulatedKill):
        _train()(train_cfg(*common, f"paths.output_dir={tmp_path}/run"), callbacks=[killed])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    resumed = IndexRecorder()
    summary = _train()(train_cfg(*common, f"paths.output_dir={tmp_path}/run", f"ckpt_path={last}"),
                       callbacks=[resumed])
    assert resumed.seen[0][0] == 6  # continues at the saved step (mid-epoch 1), not from scratch
    assert resumed.seen == full.seen[6:]  # and sees exactly the batches the uninterrupted run saw
    assert summary["global_step"] == 8


# ------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_naming_the_step(train_cfg):
    with pytest.raises(FloatingPointError, match="global step 0"):
        _train()(train_cfg("model=resnet18", "data.std=[0,0,0]", "logger=[]"))


def test_num_classes_mismatch_errors_before_training(train_cfg):
    with pytest.raises(ValueError, match="num_classes=7"):
        _train()(train_cfg("model=resnet18", "model.num_classes=7"))


def test_checkpoint_of_another_model_errors(train_cfg, tmp_path):
    _train()(train_cfg("model=resnet18", "logger=[]", f"paths.output_dir={tmp_path}/a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    rec = IndexRecorder()
    with pytest.raises(ValueError, match="resnet18"):
        _train()(train_cfg("model=cbam_resnet18", "logger=[]", f"ckpt_path={last}",
                           f"paths.output_dir={tmp_path}/b"), callbacks=[rec])
    assert rec.seen == []


# ----------------------------------------------------------------------------------- eval, wandb
def test_eval_writes_png_csv_and_metrics(train_cfg, eval_cfg, tmp_path):
    import eval as eval_script

    _train()(train_cfg("model=resnet18", "logger=[]"))
    m = eval_script.evaluate(eval_cfg(f"ckpt_path={tmp_path}/checkpoints/last.ckpt", "data.eval_batch_size=128"))
    out = tmp_path / "eval"
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == m["num_images"] == 359
    assert abs(sum(int(r["correct"]) for r in rows) / len(rows) - m["top1"]) < 1e-9
    assert m["top5"] >= m["top1"] and set(m["per_class_top1"]) == {str(i) for i in range(10)}
    assert json.loads((out / "metrics.json").read_text())["top1"] == m["top1"]


def test_wandb_offline_writes_run_files(train_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train()(train_cfg("model=resnet18", "logger=wandb"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), runs


# ------------------------------------------------------------------------------------------- ddp
@pytest.mark.slow  # two spawned processes: ~15 s of the default run; CI's slow run keeps it
def test_ddp_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "train.py", "model=resnet18", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "trainer.max_epochs=1",
           "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "data.batch_size=8",
           "logger=csv", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
           f"hydra.run.dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["global_step"] == 3 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "world_size: 2" in r.stderr + r.stdout or "GLOBAL_RANK: 1" in r.stderr + r.stdout


def test_eval_writes_viz_pictures(train_cfg, eval_cfg, tmp_path):
    import eval as eval_script

    _train()(train_cfg("model=cbam_resnet18", "logger=[]"))
    ckpt = f"ckpt_path={tmp_path}/checkpoints/last.ckpt"
    eval_script.evaluate(eval_cfg(ckpt, "viz.num_images=2", "data.eval_batch_size=128"))
    viz = tmp_path / "eval" / "viz"
    index = (viz / "index.html").read_text()
    dirs = sorted(d.name for d in viz.iterdir() if d.is_dir())
    assert len(dirs) == 2, dirs  # the first two val images, one folder each
    for d in dirs:
        for f in ("cam.png", "overview.png", "channels.png"):
            assert (viz / d / f).stat().st_size > 1000, (d, f)
        assert f"{d}/cam.png" in index
    assert not (viz / dirs[0] / "layers").exists()  # per_layer defaults to off
