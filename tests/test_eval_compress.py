"""``python eval.py ckpt_path=... compress=<method>``: the float and the compressed model on one split."""
from __future__ import annotations

import json

import pytest
from conftest import SHRINK, compose

pytest.importorskip("torchao")

TINY_VIT = ["model=vit_t_16", "+model.kwargs.patch_size=8", "+model.kwargs.depth=2"]
FAST = ["data.eval_batch_size=128", "compress.calib_batches=2", "compress.calib_batch_size=16", "compress.speed_rounds=2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import train

    d = tmp_path_factory.mktemp("run")
    train.train(compose("train", [*SHRINK, *TINY_VIT, "logger=[]"], d))
    return d / "checkpoints" / "last.ckpt"


def _eval(ckpt, tmp_path, *overrides):
    import eval as eval_script

    return eval_script.evaluate(compose("eval", [f"ckpt_path={ckpt}", *FAST, *overrides], tmp_path))


def test_config_group_parses_names_and_a_bare_ratio(tmp_path):
    from zoo.compress.evaluate import resolve_method

    for name in ("int8-dynamic", "int8-weight", "int8-static", "prune"):
        assert resolve_method(compose("eval", [f"compress={name}"], tmp_path).compress) == name
    assert resolve_method(compose("eval", [], tmp_path).compress) is None
    cfg = compose("eval", ["compress.prune_ratio=0.25"], tmp_path).compress
    assert resolve_method(cfg) == "prune" and cfg.prune_ratio == 0.25
    assert compose("eval", ["compress=prune", "compress.prune_ratio=0.3"], tmp_path).compress.prune_ratio == 0.3


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_eval_compress_reports_top1_size_and_speed(ckpt, tmp_path, method, capsys):
    m = _eval(ckpt, tmp_path, f"compress={method}")
    c = m["compress"]
    assert c["method"] == method and c["top1_float"] == m["top1"]
    assert abs(c["top1_change"] - (c["top1"] - m["top1"])) < 1e-12
    assert c["top1_agreement"] >= 0.8  # int8 of a tiny ViT rarely changes its answer
    assert c["disk_bytes"] < 0.5 * c["disk_bytes_float"]  # int8 weights
    assert c["params"] == c["params_float"] > 0  # quantisation keeps every weight
    assert c["speedup"] > 0 and c["speed_batch"] == 128
    assert json.loads((tmp_path / "compress.json").read_text())["top1"] == c["top1"]
    printed = capsys.readouterr().out
    assert f"{method}: top-1" in printed and "size on disk" in printed and "x the float model" in printed


def test_bad_compress_settings_fail_before_any_work(tmp_path):
    import eval as eval_script

    with pytest.raises(ValueError, match="prune_ratio must be a number in \\(0, 1\\)"):
        eval_script.evaluate(compose("eval", ["ckpt_path=/nonexistent.ckpt", "compress.prune_ratio=1.5"], tmp_path))
    with pytest.raises(ValueError, match="choose from.*int8-dynamic"):
        eval_script.evaluate(compose("eval", ["ckpt_path=/nonexistent.ckpt", "compress.method=int4"], tmp_path))


def test_eval_prune_reports_fewer_parameters(ckpt, tmp_path):
    c = _eval(ckpt, tmp_path, "compress.prune_ratio=0.5")["compress"]
    assert c["method"] == "prune" and c["prune_ratio"] == 0.5
    assert c["params"] < c["params_float"] and c["disk_bytes"] < c["disk_bytes_float"]


@pytest.mark.slow  # inductor compiles one graph per batch size (~1 min on 2 cores)
def test_eval_int8_static_compiled_runs_the_quantised_graph(ckpt, tmp_path, capsys):
    eager = _eval(ckpt, tmp_path, "compress=int8-static")["compress"]
    c = _eval(ckpt, tmp_path, "compress=int8-static", "compress.compile=true")["compress"]
    assert "int8-static compiled: top-1" in capsys.readouterr().out
    # the oneDNN int8 kernels compute what the reference (eager) numerics do, up to rounding
    assert abs(c["top1"] - eager["top1"]) <= 0.02 and c["top1_agreement"] >= 0.8
    assert c["disk_bytes"] == eager["disk_bytes"] and c["speedup"] > 0
