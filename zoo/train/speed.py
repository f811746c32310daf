"""Throughput checks: ``python -m zoo.train.speed [loop|transforms|all] [--steps N] [--images N]``.

loop: images/s of the train.py loop (Lightning, ClassificationModule, the default digits config)
against a plain PyTorch loop doing the same work on the same model, data and transforms (autocast,
label-smoothed CE, grad clipping, AdamW, per-step schedule, EMA update).
transforms: images/s of decode + training augmentation on generated ImageNet-size JPEGs, for the
albumentations pipeline (cv2 decode) against torchvision transforms v2 and timm ``create_transform``
(both with their own decoders) configured with the same augmentations.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _datamodule(batch_size: int):
    from zoo.data import ImageFolderDataModule

    dm = ImageFolderDataModule(embedded="digits", img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear",
                               crop_pct=1.0, batch_size=batch_size, train_aug=dict(scale=(0.6, 1), ratio=(0.8, 1.25), hflip=0))
    dm.prepare_data()
    dm.setup()
    return dm


class _Clock:
    """Times training batches after ``warmup`` of them (a Lightning callback, duck-typed)."""

    def __init__(self, warmup: int):
        import lightning as L

        class C(L.Callback):
            def on_train_batch_start(cb, trainer, *a):
                if trainer.global_step == warmup:
                    self.t0 = time.perf_counter()

            def on_train_end(cb, trainer, *a):
                self.t1 = time.perf_counter()

        self.cb, self.t0, self.t1 = C(), None, None


def loop_speed(model: str = "cbam_resnet18", steps: int = 60, warmup: int = 10, batch_size: int = 64,
               precision: str = "auto") -> dict:
    import lightning as L

    from zoo.train import ClassificationModule, resolve_precision

    precision = resolve_precision(precision, "cpu")
    net_cfg = {"_target_": "zoo.train.build_model", "name": model, "kwargs": {"img_size": 32}}
    kw = dict(optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3, "weight_decay": 0.05},
              scheduler={"_target_": "zoo.train.schedules.warmup_cosine", "_partial_": True, "warmup_epochs": 1},
              label_smoothing=0.1, ema={"decay": 0.998})
    # Lightning: the module and trainer settings train.py uses (no logger / progress bar / checkpoints).
    torch.manual_seed(0)
    dm = _datamodule(batch_size)
    module = ClassificationModule(net_cfg, 10, **kw)
    clock = _Clock(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False, enable_model_summary=False, callbacks=[clock.cb])
    trainer.fit(module, datamodule=dm)
    lightning_ips = (steps - warmup) * batch_size / (clock.t1 - clock.t0)

    # Plain PyTorch: same model class, loader, optimizer groups, schedule and EMA.
    torch.manual_seed(0)
    module = ClassificationModule(net_cfg, 10, **kw)
    net, ema = module.model, module.ema
    from zoo.train.module import param_groups
    from zoo.train.schedules import warmup_cosine_factor

    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=3e-3)
    per_epoch = len(dm.train_dataloader())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_factor(
        s, total=steps, warmup=per_epoch, warmup_factor=1e-3, min_factor=1e-2))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    net.train()
    step, t0 = 0, None
    while step < steps:
        for batch in dm.train_dataloader():
            if step == warmup:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = loss_fn(net(batch["image"]), batch["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update(net, step=step)
            step += 1
            if step == steps:
                break
    plain_ips = (steps - warmup) * batch_size / (time.perf_counter() - t0)
    return {"model": model, "precision": precision, "batch_size": batch_size, "lightning_img_s": round(lightning_ips, 1),
            "plain_img_s": round(plain_ips, 1), "ratio": round(lightning_ips / plain_ips, 3)}


def _jpegs(folder: Path, n: int) -> list[Path]:
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)  # ImageNet's typical sizes
        base = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-20, 20, (h, w, 3))
        img = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
        p = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def transform_speed(images: int = 200, size: int = 224, repeats: int = 3) -> dict:
    import cv2
    import timm.data
    import torchvision.io as tio
    from PIL import Image
    from torchvision.transforms import v2

    from zoo.data import train_transform

    torch.set_num_threads(1)  # one loader worker's view: every pipeline single-threaded
    cv2.setNumThreads(1)
    alb = train_transform(size, MEAN, STD, "bilinear", scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4)
    tv = v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(0.5),
                     v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4)], p=0.8), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(MEAN, STD)])
    tm = timm.data.create_transform(size, is_training=True, hflip=0.5, color_jitter=0.4, auto_augment=None,
                                    interpolation="bilinear", re_prob=0.0, mean=MEAN, std=STD)
    pipelines = {
        "albumentations(cv2)": lambda p: alb(image=cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))["image"],
        "torchvision_v2(decode_jpeg)": lambda p: tv(tio.decode_jpeg(tio.read_file(str(p)))),
        "timm_create_transform(PIL)": lambda p: tm(Image.open(p).convert("RGB")),
    }
    out = {}
    with tempfile.TemporaryDirectory() as d:
        paths = _jpegs(Path(d), images)
        for name, fn in pipelines.items():
            for p in paths[:10]:
                assert fn(p).shape == (3, size, size)
            best = 0.0
            for _ in range(repeats):
                t = time.perf_counter()
                for p in paths:
                    fn(p)
                best = max(best, len(paths) / (time.perf_counter() - t))
            out[name] = round(best, 1)
    ours, other = out["albumentations(cv2)"], max(v for k, v in out.items() if not k.startswith("alb"))
    out["ratio_vs_faster_other"] = round(ours / other, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all", choices=["loop", "transforms", "all"])
    ap.add_argument("--model", default="cbam_resnet18")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()
    if a.what in ("loop", "all"):
        print("loop:", loop_speed(a.model, a.steps, precision=a.precision), flush=True)
    if a.what in ("transforms", "all"):
        print("transforms (images/s, 1 thread, decode included):", transform_speed(a.images), flush=True)


if __name__ == "__main__":
    main()
