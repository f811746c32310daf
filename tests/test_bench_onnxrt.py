"""The onnxruntime backend of zoo.bench: the exported graph runs next to eager (no time is asserted)."""
import csv

import pytest
import torch

import zoo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from zoo.bench.__main__ import main as bench_main  # noqa: E402
from zoo.bench.onnxrt import BF16_NOTE, ORT_LIBRARY, OrtModule  # noqa: E402


def test_ort_module_runs_the_exported_graph(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("vit_t_16", img_size=32, patch_size=8, depth=2, num_classes=5, fast=False).eval()
    path = zoo.export.onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 32, 32))
    ort = OrtModule(path, model, threads=1)
    assert ort.session.get_session_options().intra_op_num_threads == 1
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), ort(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert sum(p.numel() for p in ort.parameters()) == sum(p.numel() for p in model.parameters())


def test_cli_backend_onnxruntime_adds_a_row(tmp_path, capsys):
    out = tmp_path / "res"
    assert bench_main(["resnet18", "--backend", "onnxruntime", "--img-size", "32", "--batch", "2", "--repeats", "1",
                       "--warmup", "0", "--precision", "fp32,bf16", "--threads", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "bench.csv")))
    ort = [r for r in rows if r["library"] == ORT_LIBRARY]
    assert [r["precision"] for r in ort] == ["fp32", "bf16"]
    zoo_row = next(r for r in rows if r["library"] == "zoo" and r["precision"] == "fp32")
    assert ort[0]["vs"] == zoo_row["impl"] and float(ort[0]["ratio"]) > 0
    assert zoo_row["vs"] != ort[0]["impl"]  # the zoo row is still compared with the twin libraries
    assert ort[0]["gmacs"] == zoo_row["gmacs"] and ort[0]["params_m"] == zoo_row["params_m"]
    assert ort[1]["note"] == BF16_NOTE and ort[0]["note"] == ""
    assert "ort:resnet18" in capsys.readouterr().out


def test_cli_backend_onnxruntime_refuses_training():
    with pytest.raises(SystemExit, match="inference only"):
        bench_main(["resnet18", "--backend", "onnxruntime", "--mode", "train"])
