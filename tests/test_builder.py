"""The builder: model.pretrained_cfg on every model, the classifier by its declared name, the catalog
looked up once, and the layering (the registry imports no weights; no cycle)."""
from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from registry_sets import per_model

import zoo
from zoo import builder, registry
from zoo.weights import CheckpointMismatchError, load_state_dict_into

PKG = Path(zoo.__file__).resolve().parent
CFG_KEYS = {"architecture", "entry", "source", "input_size", "mean", "std", "interpolation", "crop_pct",
            "num_classes", "classifier"}


@pytest.mark.parametrize("name", per_model(zoo.list_models(), deep=True))  # meta builds: cheap
def test_every_model_has_a_pretrained_cfg_naming_its_classifier(name):
    with torch.device("meta"):  # shapes only: every registered model in a few seconds
        model = zoo.create(name, num_classes=7)
    cfg = model.pretrained_cfg
    assert set(cfg) == CFG_KEYS
    assert cfg["architecture"] == name and cfg["entry"] is None and cfg["source"] is None
    assert cfg["num_classes"] == 7 and cfg["input_size"][0] == 3
    assert (cfg["mean"], cfg["std"], cfg["crop_pct"], cfg["interpolation"]) == (
        builder.IMAGENET_MEAN, builder.IMAGENET_STD, 0.875, "bicubic")
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_native_input_size_and_headless_models():
    with torch.device("meta"):
        assert zoo.create("swin_v2_t").pretrained_cfg["input_size"] == (3, 256, 256)  # its default entry's
        assert zoo.create("vit_t_16", img_size=384).pretrained_cfg["input_size"] == (3, 384, 384)
        assert zoo.create("resnet18", in_chans=1).pretrained_cfg["input_size"] == (1, 224, 224)
        headless = zoo.create("swin_t", num_classes=0)
    assert headless.pretrained_cfg["classifier"] == "head"  # an Identity keeps its name


def test_pretrained_cfg_from_a_file_or_the_catalog_looked_up_once(tmp_path, monkeypatch):
    from zoo.weights import catalog, loading

    torch.manual_seed(0)
    src = zoo.create("resnet18", num_classes=5)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    calls = []
    real = catalog.entry_for
    monkeypatch.setattr(catalog, "entry_for", lambda *a: calls.append(a) or real(*a))
    model = zoo.create("resnet18", pretrained=str(path), num_classes=5)
    assert calls == []  # an existing file needs no catalog
    assert model.pretrained_cfg["source"] == str(path) and model.pretrained_cfg["entry"] is None
    assert model.pretrained_cfg["interpolation"] == "bicubic"  # the default cfg: the file is not catalogued
    assert model.load_report.cfg is None and torch.equal(model.fc.weight, src.fc.weight)

    # A tag: one lookup serves the architecture kwargs, the pretrained cfg and the download.
    monkeypatch.setattr(loading.WeightSource, "fetch", lambda self, progress=True: str(path))
    with pytest.warns(UserWarning, match="re-initialised"):
        model = zoo.create("resnet18", pretrained="tv_in1k", num_classes=3)
    assert len(calls) == 1
    entry = catalog.catalog()["resnet18.tv_in1k"]
    cfg = model.pretrained_cfg
    assert (cfg["entry"], cfg["source"], cfg["interpolation"], cfg["input_size"]) == (
        "resnet18.tv_in1k", entry.url, "bilinear", (3, 224, 224))
    assert model.load_report.cfg is entry


def test_bad_names_list_the_valid_choices():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        zoo.create("resnet81")
    with pytest.raises(ValueError, match=r"its tags: \['tv_in1k', 'a1_in1k'\]"):
        zoo.create("resnet18", pretrained="in1k")


# --- the classifier comes from the model, not from a list of module names ----------------------
class _Odd(nn.Module):
    """A model whose classifier is called ``logits`` and which also has a module named ``head``."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3)
        self.head = nn.Linear(8, 8)  # not the classifier, whatever its name suggests
        self.logits = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.logits


@pytest.fixture
def odd_model(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    zoo.register_model(name="zz_odd")(lambda **kw: _Odd(**kw))
    return "zz_odd"


def test_loader_uses_the_declared_classifier(odd_model):
    src = _Odd(num_classes=10)
    model = zoo.create(odd_model, num_classes=3)
    assert model.pretrained_cfg["classifier"] == "logits"
    with pytest.warns(UserWarning, match="re-initialised logits.bias, logits.weight"):
        report = load_state_dict_into(model, src.state_dict())
    assert report.reinitialized == ["logits.bias", "logits.weight"]
    assert torch.equal(model.head.weight, src.head.weight)
    # num_classes=0: the checkpoint's classifier is still known by the model's declared name.
    headless = zoo.create(odd_model, num_classes=0)
    with pytest.warns(UserWarning, match="num_classes=0"):
        load_state_dict_into(headless, src.state_dict())
    # A head-looking name that is not the classifier is never dropped silently.
    sd = src.state_dict()
    sd["head.weight"] = torch.zeros(8, 9)
    with pytest.raises(CheckpointMismatchError, match=r"head.weight \(8, 9\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_state_dict_into(zoo.create(odd_model, num_classes=10), sd)


# --- layering: names -> builder -> weights, no way back ----------------------------------------
def _imports(path: Path, skip_functions: tuple[str, ...] = ()) -> list[str]:
    """Modules imported anywhere in ``path`` (also inside functions), as absolute names."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in skip_functions
               for n in ast.walk(f)}
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = []
    for n in ast.walk(tree):
        if id(n) in skipped:
            continue
        if isinstance(n, ast.Import):
            out += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = pkg.rsplit(".", n.level - 1)[0] if n.level else ""
            mod = ".".join(p for p in (base, n.module or "") if p)
            out += [mod] if n.module else [f"{mod}.{a.name}" for a in n.names]
    return out


def test_registry_imports_no_model_and_no_weights():
    assert not [m for m in _imports(PKG / "registry.py") if m.startswith("zoo")]
    # It works as a file of its own: names and decorators need nothing else from zoo.
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('reg', sys.argv[1]); "
        "reg = sys.modules['reg'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(reg); "
        "reg.register_model(name='m')(lambda **kw: None); print(reg.list_models(), "
        "sorted(m for m in sys.modules if m.startswith('zoo')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(PKG / "registry.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['m']", "[]"]
    assert not hasattr(registry, "create") and zoo.create is builder.create


def test_no_layer_reaches_back_up():
    """weights never imports the builder; data never the catalog; viz and the checkpoint reader never train."""
    rules = {"weights": ("zoo.builder", "zoo.checkpoint"), "data": ("zoo.weights", "zoo.builder"),
             "viz": ("zoo.train",)}
    for sub, banned in rules.items():
        for path in (PKG / sub).glob("*.py"):
            if path.name == "__main__.py":  # a command line composes Hydra configs via zoo.train
                continue
            bad = [m for m in _imports(path) if m.startswith(banned)]
            assert not bad, (path.relative_to(PKG), bad)
    assert not [m for m in _imports(PKG / "checkpoint.py") if m.startswith("zoo.train")]
