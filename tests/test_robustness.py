"""Nothing lost, nothing wrong: checkpoints that cannot be written, half-written checkpoints,
splits with no readable image, what a user is told about skipped images, the README's viz command."""
from __future__ import annotations

import errno
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


# ------------------------------------------------------------- 6, 11: splits with no readable image
def _tree(root: Path, *, bad_val: bool = False, bad_train: bool = False, n: int = 4) -> Path:
    """``root/{train,val}/{a,b}/*.png`` of 24 px images; a bad split holds only undecodable files."""
    for split, bad in (("train", bad_train), ("val", bad_val)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                f = root / split / c / f"{i}.png"
                if bad:
                    f.write_bytes(b"not a png")
                else:
                    cv2.imwrite(str(f), np.full((24, 24, 3), 60 * i + (c == "b") * 30, np.uint8))
    return root


DATA = ["data=imagefolder", "data.img_size=32", "data.num_workers=0", "data.pin_memory=false", "logger=[]"]


def test_eval_stops_clearly_when_every_image_is_undecodable(train_cfg, eval_cfg, tmp_path):
    import eval as eval_script

    good, bad = _tree(tmp_path / "good"), _tree(tmp_path / "bad", bad_val=True)
    _train()(train_cfg("model=resnet18", *DATA, f"data.root={good}"))
    cfg = eval_cfg(f"ckpt_path={tmp_path}/checkpoints/last.ckpt", "data=imagefolder", f"data.root={bad}",
                   "data.num_workers=0", "data.pin_memory=false")
    with pytest.raises(ValueError, match="no readable image") as e:
        eval_script.evaluate(cfg)
    assert "8" in str(e.value) and str(bad / "val") in str(e.value)


def test_training_stops_when_validation_has_no_readable_image_and_saves_no_best(train_cfg, tmp_path):
    data = _tree(tmp_path / "data", bad_val=True)
    with pytest.raises(RuntimeError, match="No readable validation image") as e:
        _train()(train_cfg("model=resnet18", *DATA, f"data.root={data}"))
    assert str(data / "val") in str(e.value)
    assert not list((tmp_path / "checkpoints").glob("best*.ckpt"))


def test_training_stops_when_training_has_no_readable_image(train_cfg, tmp_path):
    data = _tree(tmp_path / "data", bad_train=True)
    with pytest.raises(RuntimeError, match="No readable training image"):
        _train()(train_cfg("model=resnet18", *DATA, f"data.root={data}"))
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_skipped_images_are_printed_with_their_list(train_cfg, eval_cfg, tmp_path, capsys):
    """Visible without Python warnings (PYTHONWARNINGS=ignore): in the summary train.py and eval.py print."""
    import warnings

    import eval as eval_script

    data = _tree(tmp_path / "data")
    (data / "train" / "a" / "zz_bad.png").write_bytes(b"garbage")
    (data / "val" / "b" / "zz_bad.png").write_bytes(b"")
    warnings.simplefilter("ignore")
    summary = _train()(train_cfg("model=resnet18", *DATA, f"data.root={data}", "data.batch_size=9"))
    out = capsys.readouterr().out
    listing = tmp_path / "skipped_images.txt"
    assert f"skipped:     1 train, 1 val images (listed in {listing})" in out, out
    assert summary["skipped_images"] == {"train": 1, "val": 1, "list": str(listing)}
    lines = listing.read_text().splitlines()
    assert sorted(ln.split("\t")[:2] for ln in lines) == [["train", str(data / "train/a/zz_bad.png")],
                                                          ["val", str(data / "val/b/zz_bad.png")]]
    m = eval_script.evaluate(eval_cfg(f"ckpt_path={tmp_path}/checkpoints/last.ckpt", "data=imagefolder",
                                      f"data.root={data}", "data.num_workers=0"))
    out = capsys.readouterr().out
    listing = tmp_path / "eval" / "skipped_images.txt"
    assert m["skipped_images"] == 1 and f"(1 skipped, listed in {listing})" in out, out
    assert listing.read_text().split("\t")[0] == str(data / "val/b/zz_bad.png")


# ------------------------------------------------------------------------------ 10: data that lies
def _jpeg(size=(96, 128)) -> bytes:
    y, x = np.mgrid[: size[0], : size[1]]
    img = np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], -1).astype(np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _folder(tmp_path, files: dict[str, bytes]):
    from zoo.data import ImageFolder

    for name, data in files.items():
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / name).write_bytes(data)
    return ImageFolder(tmp_path)


def test_truncated_jpeg_is_skipped_not_decoded_grey(tmp_path):
    good = _jpeg()
    ds = _folder(tmp_path, {"cut.jpg": good[: len(good) // 2], "good.jpg": good,
                            "trailer.jpg": good + b"camera trailer data", "padded.jpg": good + b"\x00" * 16})
    with pytest.warns(UserWarning, match="cut.jpg.*truncated"):
        items = [ds[i] for i in range(len(ds))]
    assert [it is None for it in items] == [True, False, False, False]  # sorted: cut, good, padded, trailer
    assert all(it["image"].shape == (96, 128, 3) for it in items[1:])


def test_image_over_the_pixel_limit_is_skipped_before_decoding(tmp_path, monkeypatch):
    from zoo.data import ImageFolder, collate_skip

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "huge.png").write_bytes(cv2.imencode(".png", np.zeros((200, 300, 3), np.uint8))[1].tobytes())
    (tmp_path / "a" / "small.png").write_bytes(cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    ds = ImageFolder(tmp_path, max_pixels=10_000)
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: decoded.append(len(buf)) or real(buf, flags))
    with pytest.warns(UserWarning, match=r"huge.png.*300 x 200 = 60000 pixels, over the limit of 10000"):
        batch = collate_skip(ds.__getitems__([0, 1]))
    assert len(decoded) == 1  # the large one was never decoded
    assert batch["skipped"] == 1 and batch["index"].tolist() == [1]
    assert batch["skipped_items"] == [(str(tmp_path / "a" / "huge.png"), batch["skipped_items"][0][1])]
    assert ImageFolder(tmp_path, max_pixels=None)[0]["image"].shape == (200, 300, 3)


def test_pixel_limit_is_a_data_option(train_cfg, tmp_path):
    cfg = train_cfg("data=imagefolder", f"data.root={tmp_path}", "data.max_image_pixels=1234")
    assert instantiate(cfg.data).max_image_pixels == 1234


def test_empty_and_looping_class_folders_warn(tmp_path):
    from zoo.data import ImageFolder, find_classes

    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a symlink to itself
    (tmp_path / "up").symlink_to(tmp_path)  # a symlink back to the split folder
    with pytest.warns(UserWarning, match="loop.*symlink loop"):
        classes = find_classes(tmp_path)
    assert classes == ["a", "empty", "up"]
    with pytest.warns(UserWarning) as rec:
        ImageFolder(tmp_path, classes)
    msgs = " ".join(str(w.message) for w in rec)
    assert "'empty'" in msgs and "no images" in msgs
    assert "up" in msgs and "symlink loop" in msgs


# ------------------------------------------------------------------------- 8: the README's viz command
def _readme_command(prefix: str) -> list[str]:
    """The README's ``prefix ...`` command line, as written (comment dropped), split into words."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            return line.split("#")[0].split()
    raise AssertionError(f"README.md has no line starting with {prefix!r}")


def test_readme_viz_command_on_a_quickstart_checkpoint(train_cfg, tmp_path):
    _train()(train_cfg("logger=[]", "module.ema=null"))  # the quick start's model and data, shrunk
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "digit.png"), np.full((32, 32, 3), 200, np.uint8))
    words = _readme_command("python -m zoo.viz ckpt_path=")
    words = [w.replace("outputs/quickstart/checkpoints/last.ckpt", str(ckpt)).replace("path/to/images/", f"{images}/")
             for w in words]
    assert any(str(ckpt) in w for w in words) and any(str(images) in w for w in words), words
    out = tmp_path / "viz"
    r = subprocess.run([PY, *words[1:], f"hydra.run.dir={out}"], cwd=ROOT, env=QUIET, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (out / "index.html").is_file() and (out / "digit" / "overview.png").stat().st_size > 1000


# ------------------------------------------------------------------------------ 12: attention pictures
def _saved_figures(monkeypatch) -> list:
    from matplotlib.figure import Figure

    figs, real = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figs.append(self), real(self, *a, **k))[1])
    return figs


def _overlays(fig):
    """(axes title, colour-normalised values drawn, colour bar) of every map panel."""
    out = []
    for ax in fig.axes:
        ims = ax.get_images()
        if len(ims) == 2:  # the input, then the map over it
            im = ims[1]
            out.append((ax.get_title(), np.asarray(im.norm(im.get_array())), im.colorbar))
    return out


def test_overview_shows_input_prediction_scale_and_flat_maps_flat(tmp_path, monkeypatch):
    from zoo.viz.capture import AttentionMaps
    from zoo.viz.plot import plot_overview

    g = torch.Generator().manual_seed(0)
    maps = AttentionMaps()
    maps.put("layer4.1.attn.spatial", "spatial", 0.5 + 1e-4 * torch.rand(1, 7, 7, generator=g))  # near-constant gate
    ramp = torch.linspace(0, 1, 49).reshape(1, 7, 7)
    maps.put("ctx", "context", ramp / ramp.sum())
    img = np.random.default_rng(0).random((32, 32, 3))
    figs = _saved_figures(monkeypatch)
    plot_overview(img, maps, tmp_path / "overview.png", label="seven (p=0.93)")
    (fig,) = figs
    first = fig.axes[0]
    assert np.array_equal(first.get_images()[0].get_array(), img) and "seven (p=0.93)" in first.get_title()
    panels = {t.split("\n")[0]: (v, cb) for t, v, cb in _overlays(fig)}
    assert set(panels) == {"layer4.1.attn.spatial", "ctx"}
    flat, cb = panels["layer4.1.attn.spatial"]
    assert np.ptp(flat) < 0.01 and cb is not None  # drawn flat, with its scale
    assert (cb.norm.vmin, cb.norm.vmax) == (0.0, 1.0)  # a sigmoid gate on its own range
    assert np.ptp(panels["ctx"][0]) > 0.9 and panels["ctx"][1] is not None


def test_per_layer_heads_share_one_scale(tmp_path, monkeypatch):
    from zoo.viz.capture import AttentionMaps
    from zoo.viz.plot import plot_map

    maps = AttentionMaps()
    m = torch.stack([torch.full((5, 5), 0.04), torch.linspace(0, 0.08, 25).reshape(5, 5)])  # heads, h, w
    maps.put("blocks.0.attn", "window", m[None])
    figs = _saved_figures(monkeypatch)
    plot_map(np.zeros((20, 20, 3)), maps, "blocks.0.attn", tmp_path / "m.png")
    (fig,) = figs
    panels = _overlays(fig)
    assert len(panels) == 3  # head mean and two heads
    norms = {(p[2].norm.vmin, p[2].norm.vmax) for p in panels[1:]}
    assert len(norms) == 1  # heads compare on one scale
    assert np.ptp(panels[1][1]) < 0.01 and np.ptp(panels[2][1]) > 0.9  # the flat head stays flat
