"""Nothing lost, nothing wrong: checkpoints that cannot be written, half-written checkpoints,
splits with no readable image, what a user is told about skipped images, the README's viz command."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from conftest import ROOT, SHRINK
from hydra.utils import instantiate

PY = sys.executable
QUIET = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _train():
    import train

    return train.train


def _trainer(cfg):
    """The Trainer train.py builds from ``cfg`` (no loggers, no callbacks)."""
    return instantiate(cfg.trainer, logger=False, callbacks=[], precision="32-true")


def _checkpoint(n: int) -> dict:
    return {"state_dict": {"w": torch.arange(n, dtype=torch.float32)}, "epoch": n}


# ----------------------------------------------------------------------- 1: checkpoints silently lost
def _no_dac_override() -> list[str]:
    """A command prefix under which the folder permissions apply: root drops its override capabilities."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder unwritable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"]


def test_unwritable_checkpoint_folder_fails_loudly_before_training(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    ck.chmod(0o555)
    cmd = [*_no_dac_override(), PY, "train.py", "model=resnet18", "logger=[]", *SHRINK, f"hydra.run.dir={tmp_path}"]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=QUIET, capture_output=True, text=True, timeout=300)
    finally:
        ck.chmod(0o755)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert str(ck) in out and "paths.output_dir" in out, out[-3000:]
    assert "checkpoints:" not in r.stdout  # no summary naming files that are not there
    assert not (tmp_path / "summary.json").exists() or "last.ckpt" not in (tmp_path / "summary.json").read_text()


class SwallowingWriter(L.Callback):
    """Replaces the Trainer's checkpoint writer by one that, like Lightning's own on a PermissionError,
    returns without writing anything."""

    def setup(self, trainer, pl_module, stage):
        class Swallow(type(trainer.strategy.checkpoint_io)):
            def save_checkpoint(self, checkpoint, path, storage_options=None):
                return None

        trainer.strategy.checkpoint_io = Swallow()


def test_reported_checkpoints_are_checked_to_exist(train_cfg, tmp_path):
    with pytest.raises(RuntimeError, match=r"last\.ckpt") as e:
        _train()(train_cfg("model=resnet18", "logger=[]"), callbacks=[SwallowingWriter()])
    assert "does not exist" in str(e.value) and "paths.output_dir" in str(e.value)
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_save_errors_are_raised_with_the_path_and_the_fix(train_cfg, tmp_path, monkeypatch):
    io = _trainer(train_cfg()).strategy.checkpoint_io
    target = tmp_path / "ro" / "last.ckpt"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(OSError, match="paths.output_dir") as e:
        io.save_checkpoint(_checkpoint(3), target)
    assert str(target) in str(e.value)


# -------------------------------------------------------------------------- 2: half-written last.ckpt
def test_trainer_writes_checkpoints_atomically(train_cfg, tmp_path, monkeypatch):
    """The disk fills half-way through the second save: the first last.ckpt survives, intact."""
    io = _trainer(train_cfg()).strategy.checkpoint_io
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(3), last)
    real_save, seen = torch.save, []

    def disk_full_half_way(obj, f, *a, **k):
        seen.append(Path(f.name) if hasattr(f, "name") else f)
        import io as _io

        buf = _io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_half_way)
    with pytest.raises(OSError, match="No space left") as e:
        io.save_checkpoint(_checkpoint(1000), last)
    monkeypatch.undo()
    assert str(last) in str(e.value)
    assert seen and seen[0].parent == last.parent  # written beside its final name, then renamed
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left
    assert torch.load(last, weights_only=True)["epoch"] == 3


def _private_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _private_tmpfs(), reason="needs root and mount namespaces for a private small tmpfs")
def test_a_full_disk_keeps_the_previous_last_ckpt(tmp_path):
    """The real thing: checkpoints on a 1 MB tmpfs (in a private mount namespace), TMPDIR elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
from conftest import compose
from hydra.utils import instantiate
cfg = compose("train", [], {str(tmp_path)!r})
io = instantiate(cfg.trainer, logger=False, callbacks=[], precision="32-true").strategy.checkpoint_io
last = {str(mnt / 'last.ckpt')!r}
io.save_checkpoint({{"w": torch.zeros(1000), "epoch": 1}}, last)  # 4 kB: fits
try:
    io.save_checkpoint({{"w": torch.zeros(500_000), "epoch": 2}}, last)  # 2 MB: does not fit
    print("SAVED")
except OSError as e:
    print("RAISED", e)
print("EPOCH", torch.load(last, weights_only=True)["epoch"])
"""
    (tmp_path / "save_twice.py").write_text(script)
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt} && {PY} {tmp_path}/save_twice.py"],
                       cwd=ROOT, env=QUIET, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert "RAISED" in out and "EPOCH 1" in out, out[-3000:]
