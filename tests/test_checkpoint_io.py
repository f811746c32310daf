"""Safe checkpoint reading and strict, explained loading (the layer under every converter)."""
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from zoo.weights import CheckpointMismatchError, UnsafeCheckpointError, load_state_dict_into, read_state_dict


class Net(nn.Module):
    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3)
        self.fc = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.fc


def test_unwraps_wrappers_and_prefixes(tmp_path):
    sd = Net().state_dict()
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "a.ckpt")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pth")
    for name in ("a.ckpt", "b.pth"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_safetensors_detected_without_suffix(tmp_path):
    sd = {k: v.contiguous() for k, v in Net().state_dict().items()}
    save_file(sd, str(tmp_path / "w.bin"))
    assert set(read_state_dict(tmp_path / "w.bin")) == set(sd)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/zoo_pwned_marker",))


def test_code_running_pickle_is_refused(tmp_path):
    import os

    marker = "/tmp/zoo_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"w": torch.zeros(1), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="not executed"):
        read_state_dict(tmp_path / "evil.pth")
    assert not os.path.exists(marker)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save(Net().state_dict(), tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_state_dict(tmp_path / "t.pth")


def test_mismatch_lists_keys():
    sd = Net().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.weight"] = torch.zeros(8, 3, 5, 5)
    del sd["conv.bias"]
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_into(Net(), sd)
    msg = str(e.value)
    assert "missing (1): conv.bias" in msg and "unexpected (1): extra.weight" in msg and "conv.weight (8, 3, 5, 5)" in msg


def test_classifier_of_other_size_reinitialised_with_warning():
    src = Net(num_classes=10)
    dst = Net(num_classes=4)
    fc_before = dst.fc.weight.clone()
    with pytest.warns(UserWarning, match="re-initialised"):
        report = load_state_dict_into(dst, src.state_dict())
    assert report.reinitialized == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.conv.weight, src.conv.weight) and torch.equal(dst.fc.weight, fc_before)
    with pytest.warns(UserWarning):
        load_state_dict_into(Net(num_classes=0), src.state_dict())


@pytest.mark.parametrize("in_chans", [1, 2, 6])
def test_first_conv_adapted_to_in_chans(in_chans):
    src = Net()
    dst = Net(in_chans=in_chans)
    report = load_state_dict_into(dst, src.state_dict())
    assert report.adapted == ["conv.weight"] and dst.conv.weight.shape[1] == in_chans
    if in_chans % 3 and in_chans != 1:
        return  # repeat-and-truncate keeps only the scale, not the exact grey response
    # A grey image fed to every channel gives the same pre-activation as the RGB original.
    x = torch.randn(1, 1, 6, 6)
    ref = nn.functional.conv2d(x.expand(-1, 3, -1, -1), src.conv.weight)
    got = nn.functional.conv2d(x.expand(-1, in_chans, -1, -1), dst.conv.weight)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# --- the one reader of train.py checkpoints (zoo.checkpoint): eval.py, zoo.viz and resume ------
def _train_ckpt(path, *, ema: bool = True, name: str = "resnet18", num_classes: int = 4):
    """A checkpoint shaped like train.py's: ``model.`` keys, a ``zoo`` entry, EMA under ``module.``."""
    import zoo

    torch.manual_seed(0)
    model, avg = zoo.create(name, num_classes=num_classes).eval(), zoo.create(name, num_classes=num_classes).eval()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "zoo": {"model_name": name, "num_classes": num_classes, "class_names": list("abcd")[:num_classes],
                    "data_config": {"img_size": 32}, "model_kwargs": {}}}
    if ema:
        ckpt["ema_state_dict"] = {f"module.{k}": v for k, v in avg.state_dict().items()}
    torch.save(ckpt, path)
    return model, avg


def test_eval_and_viz_read_checkpoints_alike_ema_included(tmp_path):
    from zoo.checkpoint import load_checkpoint, read_checkpoint
    from zoo.train.evaluate import model_from_checkpoint
    from zoo.viz.load import load_model

    model, avg = _train_ckpt(tmp_path / "last.ckpt")
    x = torch.randn(1, 3, 32, 32)
    for use_ema, want in ((False, model), (True, avg)):
        with torch.no_grad():
            ref = want(x)
            got = [load_checkpoint(tmp_path / "last.ckpt", use_ema=use_ema)[0](x),
                   model_from_checkpoint(str(tmp_path / "last.ckpt"), use_ema=use_ema)[0](x),
                   load_model(ckpt_path=tmp_path / "last.ckpt", ema=use_ema)[0](x)]
        assert all(torch.equal(g, ref) for g in got)
    meta = read_checkpoint(tmp_path / "last.ckpt").meta
    assert meta["class_names"] == list("abcd") and meta["data_config"] == {"img_size": 32}

    _train_ckpt(tmp_path / "noema.ckpt", ema=False)  # EMA asked of a run that kept none: the same error everywhere
    for call in (lambda p: load_checkpoint(p, use_ema=True), lambda p: load_model(ckpt_path=p, ema=True)):
        with pytest.raises(ValueError, match=r"noema\.ckpt has no EMA weights .*module\.ema=null"):
            call(tmp_path / "noema.ckpt")


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "plain_weights", "safetensors", "not_torch"])
def test_unusable_checkpoint_names_the_file_and_what_to_do(tmp_path, kind):
    from zoo.checkpoint import read_checkpoint
    from zoo.viz.load import load_model

    path = tmp_path / "last.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _train_ckpt(path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "plain_weights":
        torch.save(Net().state_dict(), path)
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in Net().state_dict().items()}, str(path))
    elif kind == "not_torch":
        path.write_text("epoch: 3\n")
    want = {"missing": "does not exist.*checkpoints/", "empty": "empty \\(0 bytes\\).*another checkpoint",
            "truncated": "truncated.*another checkpoint", "plain_weights": "not a zoo train.py checkpoint.*pretrained=",
            "safetensors": "safetensors weights file.*pretrained=", "not_torch": "not a torch file"}[kind]
    error = FileNotFoundError if kind == "missing" else ValueError
    for read in (read_checkpoint, lambda p: load_model(ckpt_path=p)):
        with pytest.raises(error, match=want) as e:
            read(path)
        assert str(path) in str(e.value) and type(e.value) in (FileNotFoundError, __import__("zoo").checkpoint.CheckpointError)


def test_resume_check_and_retrofitted_checkpoint(tmp_path):
    """The resume check names both models; a run started by retrofit (gate wrappers) reloads as is."""
    import zoo
    from zoo.checkpoint import CheckpointError, check_matches, load_checkpoint, read_checkpoint

    _train_ckpt(tmp_path / "last.ckpt")
    meta = read_checkpoint(tmp_path / "last.ckpt").meta
    check_matches(meta, model_name="resnet18", num_classes=4)
    with pytest.raises(CheckpointError, match="'resnet18' .*builds 'cbam_resnet18'"):
        check_matches(meta, model_name="cbam_resnet18", num_classes=4)

    plain = tmp_path / "plain.pth"
    torch.save(zoo.create("resnet18", num_classes=3).state_dict(), plain)
    with pytest.warns(UserWarning, match="retrofitted"):
        model = zoo.create("se_resnet18", pretrained=str(plain), num_classes=3).eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "zoo": {"model_name": "se_resnet18", "num_classes": 3}}, tmp_path / "retro.ckpt")
    again, meta = load_checkpoint(tmp_path / "retro.ckpt")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert meta["class_names"] is None and meta["model_kwargs"] == {}


def test_resume_without_ema_restarts_it_from_the_trained_weights(tmp_path):
    from timm.utils import ModelEmaV3

    from zoo.checkpoint import read_checkpoint, restore_ema

    model, avg = _train_ckpt(tmp_path / "ema.ckpt")
    _train_ckpt(tmp_path / "noema.ckpt", ema=False)
    import zoo

    ema = ModelEmaV3(zoo.create("resnet18", num_classes=4))
    restore_ema(ema, read_checkpoint(tmp_path / "ema.ckpt").raw)
    assert torch.equal(ema.module.fc.weight, avg.fc.weight)
    with pytest.warns(UserWarning, match="no EMA weights.*restarts"):
        restore_ema(ema, read_checkpoint(tmp_path / "noema.ckpt").raw)
    assert torch.equal(ema.module.fc.weight, model.fc.weight)


# --- unreadable files: the error names the file, says what it is and what to do -----------------
# torch's own advice on a failed weights_only load; zoo never unpickles code, so it must never pass it on
_TORCH_ADVICE = ("weights_only", "likely succeed", "safe_globals", "arbitrary code")


def _unreadable(tmp_path, kind):
    sd = {k: v.contiguous() for k, v in Net().state_dict().items()}
    path = tmp_path / ("w.safetensors" if kind.startswith("st_") else "w.pth")
    if kind == "text":
        path.write_text("hello world, this is not a checkpoint\n" * 3)
    elif kind == "text_c":  # 'c' is pickle's GLOBAL opcode: torch reads "config: ..." as code to import
        path.write_text("config: resnet18\nclasses: 10\n")
    elif kind == "html":
        path.write_bytes(b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind in ("zip_cut", "legacy_cut"):
        torch.save(sd, path, _use_new_zipfile_serialization=kind == "zip_cut")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "st_cut":
        save_file(sd, str(path))
        path.write_bytes(path.read_bytes()[:-10])
    elif kind == "st_text":
        path.write_text("not safetensors at all")
    return path


@pytest.mark.parametrize("kind,want", [
    ("text", "text ('hello world"), ("text_c", "text ('config: resnet18"), ("html", "HTML page titled '404 Not Found'"),
    ("binary", "binary data"), ("zip_cut", "truncated"), ("legacy_cut", "truncated"), ("st_cut", "truncated"),
    ("st_text", "not safetensors"),
])
def test_unreadable_file_errors_say_what_the_file_is(tmp_path, kind, want):
    from zoo.checkpoint import read_checkpoint

    path = _unreadable(tmp_path, kind)
    readers = [read_state_dict] + ([] if kind.startswith("st_") else [read_checkpoint])  # a .safetensors is no train.py file
    for read in readers:
        with pytest.raises(ValueError) as e:  # not UnsafeCheckpointError (a RuntimeError): nothing here is code
            read(path)
        msg = str(e.value)
        assert str(path) in msg and want in msg, msg
        assert not any(a in msg for a in _TORCH_ADVICE), msg
        assert "101" not in msg and "KeyError" not in msg, msg
    if read_checkpoint in readers:  # "cut short" advice only where the file was cut short
        assert ("another checkpoint of the run" in msg) == (kind.endswith("_cut")), msg


def test_refused_pickle_says_what_it_would_run_and_never_suggests_weights_only_false(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, evil)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(evil)
    msg = str(e.value)
    assert str(evil) in msg and "system" in msg and "not executed" in msg, msg
    assert not any(a in msg for a in _TORCH_ADVICE), msg
    raw = tmp_path / "raw.pth"  # tensors pickled with pickle.dump: torch rebuilds them by running code too
    raw.write_bytes(__import__("pickle").dumps({"w": torch.zeros(2)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(raw)
    msg = str(e.value)
    assert str(raw) in msg and "pickle.dump" in msg and "torch.save" in msg, msg
    assert not any(a in msg for a in _TORCH_ADVICE), msg


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_train_and_eval_ckpt_path_empty_or_truncated_names_the_file(tmp_path, kind, train_cfg, eval_cfg):
    import eval as eval_script
    import train
    from zoo.checkpoint import CheckpointError

    path = tmp_path / "last.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        _train_ckpt(path)
        path.write_bytes(path.read_bytes()[:5000])
    runs = (lambda: train.train(train_cfg("model=resnet18", "logger=[]", f"ckpt_path={path}")),
            lambda: eval_script.evaluate(eval_cfg(f"ckpt_path={path}")))
    for run in runs:
        with pytest.raises(CheckpointError) as e:
            run()
        msg = str(e.value)
        assert str(path) in msg and ("empty (0 bytes)" if kind == "empty" else "truncated") in msg, msg
        assert "another checkpoint" in msg and not any(a in msg for a in _TORCH_ADVICE), msg


@pytest.mark.parametrize("override,want", [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not a whole number"),
    ("trainer.gradient_clip_val=big", "trainer.gradient_clip_val='big' is not a number"),
    ("trainer.limit_train_batches=some", "trainer.limit_train_batches='some' is not"),
])
def test_trainer_numbers_are_checked_before_the_run(train_cfg, override, want):
    import train

    with pytest.raises(ValueError, match=want.replace("(", r"\(")) as e:
        train.train(train_cfg("model=resnet18", "logger=[]", override))
    assert "configs/trainer" in str(e.value)


def test_eval_numbers_are_checked_before_the_run(eval_cfg, tmp_path):
    import eval as eval_script

    with pytest.raises(ValueError, match="viz.num_images='all' is not a whole number"):
        eval_script.evaluate(eval_cfg(f"ckpt_path={tmp_path / 'never_read.ckpt'}", "viz.num_images=all"))


def test_eval_refuses_weights_whose_classifier_it_would_reinitialise(tmp_path, eval_cfg):
    """Scoring a random head (top-1 of chance) as if it were the checkpoint's is worse than no answer."""
    import eval as eval_script
    import zoo

    weights = tmp_path / "two_classes.pth"
    torch.save(zoo.create("resnet18", num_classes=2).state_dict(), weights)
    with pytest.raises(ValueError) as e:
        eval_script.evaluate(eval_cfg("model=resnet18", f"pretrained={weights}"))
    msg = str(e.value)
    assert str(weights) in msg and "fc.weight" in msg and "10 classes" in msg and "train.py" in msg, msg
    assert not (tmp_path / "eval" / "metrics.json").exists()
