"""zoo.bench.scaling: model specs, token counts, the exponent fit, and one tiny end-to-end run."""
from __future__ import annotations

import csv
import math

import pytest

import zoo
from zoo.bench import scaling
from zoo.bench.scaling import ModelSpec, fit_exponent, parse_models, token_count


def test_parse_models_routes_attention_arguments():
    specs = parse_models(["vit_s_16", "vit_s_16:attn=linformer,k=64", "vit_t_16:attn=efficient,depth=2"])
    assert specs == [ModelSpec("vit_s_16"), ModelSpec("vit_s_16", {"attn": "linformer", "attn_kwargs": {"k": 64}}),
                     ModelSpec("vit_t_16", {"attn": "efficient", "depth": 2})]
    assert [s.label for s in specs] == ["vit_s_16", "vit_s_16:attn=linformer,k=64", "vit_t_16:attn=efficient,depth=2"]
    # One comma-joined argument reads the same: key=value items belong to the model before them.
    assert parse_models(["vit_s_16,vit_s_16:attn=linformer,k=64,deit_t_16"]) == [
        specs[0], specs[1], ModelSpec("deit_t_16")]


@pytest.mark.parametrize("items, match", [(["k=64"], "before any model"), (["vit_s_16:attn"], "key=value"),
                                          (["vit_s_61"], "Did you mean"), ([","], "no models")])
def test_parse_models_bad_input(items, match):
    with pytest.raises(ValueError, match=match):
        parse_models(items)


def test_cli_rejects_bad_options(capsys):
    for argv in (["vit_t_16", "--precision", "fp16"], ["vit_t_16", "--sizes", "a,b"], ["vit_t_16", "--repeats", "0"]):
        with pytest.raises(SystemExit):
            scaling.parse_args(argv)
    assert "fp32, bf16" in capsys.readouterr().err


def test_token_count_and_exponent_fit():
    with __import__("torch").device("meta"):
        assert token_count(zoo.create("vit_s_16"), 224) == 197
        assert token_count(zoo.create("deit_t_16_distilled"), 320) == 402
        assert token_count(zoo.create("resnet18"), 224) == 196
    tok = [197, 401, 785, 1601]
    assert fit_exponent(tok, [3e-6 * t**2 for t in tok]) == pytest.approx(2.0)
    assert fit_exponent(tok[-3:], [5 * t + 0 for t in tok[-3:]]) == pytest.approx(1.0)
    mixed = [t + 1e-3 * t**2 for t in tok]  # linear, then quadratic: the largest sizes give the higher slope
    assert fit_exponent(tok[-3:], mixed[-3:]) > fit_exponent(tok, mixed) > 1.0
    assert math.isnan(fit_exponent([197], [1.0]))


def test_tiny_run_writes_csv_exponents_and_plot(tmp_path):
    out = tmp_path / "sc"
    argv = ["vit_t_16:depth=2", "vit_t_16:depth=2,attn=linformer,k=4", "--sizes", "32,64", "--repeats", "1",
            "--warmup", "1", "--precision", "fp32,bf16", "--out", str(out)]
    assert scaling.main(argv) == 0
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # models x sizes x precisions
    assert {r["model"] for r in rows} == {"vit_t_16:depth=2", "vit_t_16:depth=2,attn=linformer,k=4"}
    assert sorted({int(r["tokens"]) for r in rows}) == [5, 17]
    assert all(float(r["latency_ms"]) > 0 and float(r["latency_p25_ms"]) <= float(r["latency_p75_ms"]) for r in rows)
    with open(out / "exponents.csv") as f:
        exps = list(csv.DictReader(f))
    assert len(exps) == 4 and all(math.isfinite(float(e["exponent_all"])) for e in exps)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "scaling.md").read_text()
    assert "exponent (largest 3)" in md and "python -m zoo.bench.scaling vit_t_16:depth=2" in md
