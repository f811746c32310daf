"""Weight catalog (schema, agreement with torchvision/timm metadata), loading every entry's layout,
pretrained= resolution, refusing malicious pickles, and attention retrofit."""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

import zoo
from zoo.weights import UnsafeCheckpointError, catalog, retrofit
from zoo.weights.loading import pretrained_kwargs

ROOT = Path(__file__).resolve().parents[1]
CAT = catalog.catalog()
# One cheap entry per (family, layout) loads in the default run; the rest are marked slow.
FAST_ENTRIES = {"resnet18.tv_in1k", "resnet18.a1_in1k", "se_resnet50.ra2_in1k", "cbam_resnet50.official_in1k", "vit_t_16.augreg_in21k_ft_in1k",
                "swin_t.ms_orig_in1k", "swin_v2_t.ms_in1k"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small CPU forwards run faster on one thread than fighting for cores shared with other tests."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- the catalog itself ----------------------------------------------------------------------
def test_catalog_schema_and_class_names():
    assert len(CAT) >= 40
    for name, cfg in CAT.items():
        assert name == f"{cfg.arch}.{cfg.tag}"
        names = catalog.class_names(cfg.class_names)
        assert len(names) == cfg.num_classes == 1000
    assert catalog.class_names()[:2] == ("tench", "goldfish")
    bad = dict(url="http://x", sha256="XYZ", format="ckpt")
    errs = catalog.validate_entry("Bad-Key", bad)
    assert any("arch.tag" in e for e in errs) and any("missing fields" in e for e in errs)


def test_validate_entry_catches_bad_values():
    raw = {k: v for k, v in dataclasses.asdict(CAT["resnet50.tv2_in1k"]).items() if k not in ("name", "arch", "tag")}
    raw = {**raw, "input_size": list(raw["input_size"]), "mean": list(raw["mean"]), "std": list(raw["std"])}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert catalog.validate_entry("resnet50.x", raw) == []
    assert catalog.validate_entry("resnet50.x", {**raw, "sha256": "11AD"}) != []
    assert catalog.validate_entry("resnet50.x", {**raw, "layout": "caffe"}) != []
    assert catalog.validate_entry("resnet50.x", {**raw, "crop_pct": 2.0}) != []
    assert catalog.validate_entry("resnet50.x", {**raw, "extra": 1}) != []


def test_default_tag_lookup_and_patterns():
    assert zoo.pretrained_cfg("resnet50").name == "resnet50.tv2_in1k"  # first tag is the default
    assert zoo.pretrained_cfg("resnet50.tv_in1k").tag == "tv_in1k"
    assert zoo.pretrained_cfg("swin_t").name == "swin_t.tv_in1k"
    assert zoo.pretrained_cfg("gc_resnet50") is None
    assert zoo.list_pretrained("resnet50") == ["resnet50.tv2_in1k", "resnet50.tv_in1k", "resnet50.a1_in1k"]
    assert set(zoo.list_pretrained("swin_t*,vit_t_16")) == {"swin_t.tv_in1k", "swin_t.ms_in1k", "swin_t.ms_orig_in1k",
                                                            "vit_t_16.augreg_in21k_ft_in1k"}
    assert all(CAT[n].pretrained_window_size == 8 for n in zoo.list_pretrained("swin_v2*"))


def test_catalog_matches_torchvision_metadata():
    entries = [c for c in CAT.values() if c.upstream.startswith("torchvision:")]
    assert len(entries) >= 19
    tv_classes = torchvision.models.get_model_weights("resnet50").IMAGENET1K_V1.meta["categories"]
    assert list(catalog.class_names()) == tv_classes
    for c in entries:
        enum_name, member = c.upstream.split(":", 1)[1].split(".")
        w = getattr(getattr(torchvision.models, enum_name), member)
        assert torchvision.models.get_model_weights(c.arch) is type(w), c.name  # zoo arch == tv builder
        t = w.transforms()
        assert c.url == w.url, c.name
        assert c.sha256 == re.search(r"-([0-9a-f]+)\.", w.url.rsplit("/", 1)[1]).group(1), c.name
        metrics = w.meta["_metrics"]["ImageNet-1K"]
        assert (c.top1, c.top5) == (metrics["acc@1"], metrics["acc@5"]), c.name
        assert c.input_size == (3, t.crop_size[0], t.crop_size[0]), c.name
        assert c.crop_pct == pytest.approx(t.crop_size[0] / t.resize_size[0], abs=1e-4), c.name
        assert c.interpolation == t.interpolation.value and c.mean == tuple(t.mean) and c.std == tuple(t.std), c.name
        assert c.format == "pth" and c.layout == "torchvision"


def test_catalog_matches_timm_metadata():
    from timm.models import get_pretrained_cfg

    entries = [c for c in CAT.values() if c.upstream.startswith("timm:") or "Swin-Transformer" in c.upstream]
    assert len(entries) >= 20
    for c in entries:
        timm_name = c.upstream.split(":", 1)[1] if c.layout == "timm" else _timm_swin_name(c.arch) + ".ms_in1k"
        t = get_pretrained_cfg(timm_name)
        assert t is not None, c.name
        if c.layout == "timm":
            assert c.url == f"https://huggingface.co/{t.hf_hub_id}/resolve/main/model.safetensors", c.name
            assert c.format == "safetensors"
        else:  # official Swin release: timm records the original URL
            assert c.url == t.url and c.format == "pth", c.name
        assert c.input_size == tuple(t.input_size) and c.num_classes == t.num_classes, c.name
        assert (c.interpolation, c.crop_pct, c.mean, c.std) == (t.interpolation, t.crop_pct, tuple(t.mean), tuple(t.std)), c.name
        assert c.license == t.license, c.name


def test_every_torchvision_imagenet_weight_of_a_registered_arch_is_catalogued():
    tv_models = set(torchvision.models.list_models())
    upstreams = {c.upstream for c in CAT.values()}
    checked = 0
    for arch in sorted(set(zoo.list_models()) | {c.arch for c in CAT.values()}):
        if arch not in tv_models:
            continue
        for w in torchvision.models.get_model_weights(arch):
            if w.name.startswith("IMAGENET1K_V"):  # SWAG weights (CC-BY-NC, other sizes) are left out
                assert f"torchvision:{type(w).__name__}.{w.name}" in upstreams, (arch, w.name)
                checked += 1
    assert checked >= 19


def test_catalog_ships_with_the_package():
    """pyproject maps weights/ into the wheel as zoo/weights/catalog_data and lists every zoo package."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["zoo.weights.catalog_data"] == "weights"
    assert {"*.yaml", "*.txt"} <= set(cfg["package-data"]["zoo.weights.catalog_data"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "zoo").rglob("__init__.py")}
    missing = on_disk - set(cfg["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert catalog.catalog_dir() == ROOT / "weights"


# --- every entry loads a synthetic checkpoint in its declared layout ---------------------------
def _timm_swin_name(arch: str) -> str:
    size = {"t": "tiny", "s": "small", "b": "base"}[arch[-1]]
    return f"swinv2_{size}_window8_256" if "v2" in arch else f"swin_{size}_patch4_window7_224"


def _to_official_swin(sd: dict) -> dict:
    """timm Swin keys -> the official repo's: downsample at the end of the previous stage, head.*,
    plus the derived buffers official checkpoints carry (loaders must drop them)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
        if k.endswith("relative_position_bias_table") or k.endswith("cpb_mlp.0.weight"):
            prefix = k.rsplit(".", 2 if "cpb_mlp" in k else 1)[0]
            out[prefix + ".relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            if "cpb_mlp" in k:
                out[prefix + ".relative_coords_table"] = torch.zeros(1, 15, 15, 2)
    return out


def _reference(cfg):
    """(reference model, state dict in cfg's layout) built without downloading anything."""
    import timm

    if cfg.layout == "torchvision":
        ref = torchvision.models.get_model(cfg.arch, weights=None)
        return ref, ref.state_dict()
    if cfg.layout == "timm":
        ref = timm.create_model(cfg.upstream.split(":", 1)[1].split(".")[0], pretrained=False)
        return ref, ref.state_dict()
    if cfg.arch.startswith("swin"):
        ref = timm.create_model(_timm_swin_name(cfg.arch), pretrained=False)
        return ref, _to_official_swin(ref.state_dict())
    # torchvision and timm are dependencies: an entry no branch above covers needs a reference here
    pytest.fail(f"no reference model for {cfg.upstream} ({cfg.layout} layout): add one to _reference")


def _entry_params():
    out = []
    for name in CAT:
        marks = [] if name in FAST_ENTRIES else [pytest.mark.slow]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _entry_params())
def test_entry_loads_synthetic_checkpoint_in_its_layout(name, tmp_path):
    cfg = CAT[name]
    if cfg.upstream == "official:Jongchan/attention-module":
        ref, sd = _jongchan_cbam_reference()
    else:
        torch.manual_seed(0)
        ref, sd = _reference(cfg)
    path = tmp_path / ("w.safetensors" if cfg.format == "safetensors" else "w.pth")
    if cfg.format == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    kwargs = {"window_size": cfg.pretrained_window_size} if cfg.pretrained_window_size else {}
    model = zoo.create(cfg.arch, pretrained=str(path), **kwargs).eval()
    assert model.load_report.reinitialized == [] and model.load_report.new == []
    # CNNs take any size: a small input keeps the default run fast. Transformers get their own size.
    x = torch.randn(1, 3, 64, 64) if "resnet" in cfg.arch else torch.randn(1, *cfg.input_size)
    with torch.no_grad():
        got, want = model(x), ref.eval()(x)
    # The fidelity criterion: max abs difference <= 1e-4 x max |logit| (deep random nets give large
    # logits, and zoo's channels-last convolutions sum in another order than the NCHW reference).
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def _jongchan_cbam_reference():
    """A zoo cbam_resnet50 and its state dict renamed to Jongchan/attention-module's layout.

    Their ChannelGate MLP is Sequential(Flatten, Linear, ReLU, Linear) (``mlp.1``, ``mlp.3``), their
    spatial pooling stacks [max, mean] (ours [mean, max]), the file is ``{"state_dict": ...}`` with
    DataParallel's ``module.`` prefix, and the old PyTorch that saved it wrote no ``num_batches_tracked``.
    """
    torch.manual_seed(0)
    ref = zoo.create("cbam_resnet50").eval()
    with torch.no_grad():  # non-trivial norms and gates, so a wrong conversion shows in the logits
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    renames = [(r"\.attn\.channel\.fc1\.", ".cbam.ChannelGate.mlp.1."), (r"\.attn\.channel\.fc2\.", ".cbam.ChannelGate.mlp.3."),
               (r"\.attn\.spatial\.conv\.", ".cbam.SpatialGate.spatial.conv."), (r"\.attn\.spatial\.bn\.", ".cbam.SpatialGate.spatial.bn.")]
    sd = {}
    for k, v in ref.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if ".channel.fc" in k and k.endswith("weight"):
            v = v[:, :, 0, 0]
        if k.endswith("spatial.conv.weight"):
            v = v.flip(1)
        for pat, rep in renames:
            k = re.sub(pat, rep, k)
        sd[f"module.{k}"] = v.clone()
    assert any(k.endswith("cbam.SpatialGate.spatial.bn.running_var") for k in sd)
    return ref, {"epoch": 100, "arch": "resnet", "state_dict": sd}


# --- pretrained= resolution end to end (catalog tag -> mirror -> cache -> load) ----------------
@pytest.fixture
def local_catalog(tmp_path, monkeypatch):
    """Serve a synthetic resnet18 torchvision checkpoint as the catalog's resnet18.tv_in1k via ZOO_MIRROR."""
    from zoo.weights import download as dl

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # a real torchvision file would be reused
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    ref = torchvision.models.resnet18(weights=None).eval()
    cfg = CAT["resnet18.tv_in1k"]
    mirror = tmp_path / "mirror"
    target = mirror / dl._url_relpath(cfg.url)
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    monkeypatch.setenv("ZOO_MIRROR", mirror.as_uri())
    monkeypatch.setitem(CAT, cfg.name, dataclasses.replace(cfg, sha256=dl.sha256_file(target)))
    return ref


def test_create_pretrained_true_and_tags(local_catalog):
    x = torch.randn(1, 3, 64, 64)
    for pretrained in (True, "tv_in1k", "resnet18.tv_in1k"):
        model = zoo.create("resnet18", pretrained=pretrained).eval()
        assert model.load_report.cfg.name == "resnet18.tv_in1k"
        assert model.pretrained_cfg["entry"] == "resnet18.tv_in1k" and model.pretrained_cfg["interpolation"] == "bilinear"
        with torch.no_grad():
            torch.testing.assert_close(model(x), local_catalog(x))
    with pytest.warns(UserWarning, match="re-initialised"):
        assert zoo.create("resnet18", pretrained=True, num_classes=10).fc.out_features == 10
    with pytest.raises(ValueError, match="tv_in1k"):
        zoo.create("resnet18", pretrained="no_such_tag")


def test_create_pretrained_true_without_entry_suggests_retrofit():
    with pytest.raises(ValueError, match=r"pretrained='resnet50\.tv2_in1k'"):
        zoo.create("gc_resnet50", pretrained=True)


def test_swin_v2_other_window_gets_pretrained_window_size():
    assert pretrained_kwargs("swin_v2_t", True, {"window_size": 16}) == {"window_size": 16, "pretrained_window_size": 8}
    assert pretrained_kwargs("swin_v2_t", "tv_in1k", {"window_size": 8}) == {"window_size": 8}
    assert pretrained_kwargs("swin_v2_t", True, {}) == {}
    assert pretrained_kwargs("swin_t", True, {"window_size": 12}) == {"window_size": 12}
    given = {"window_size": 16, "pretrained_window_size": 12}
    assert pretrained_kwargs("swin_v2_t", True, given) == given


# --- safety ------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_not_run(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "evil": _Evil(marker)}
    if fmt == "torch_zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="not executed"):
        zoo.create("resnet18", pretrained=str(path))
    assert not marker.exists()


# --- attention retrofit ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_resnet18(tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.create("resnet18").eval()
    path = tmp_path_factory.mktemp("plain") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_every_resnet_attention_variant_has_a_retrofit_decision():
    from zoo.models.resnet import ATTN_VARIANTS

    undecided = [a for a in ATTN_VARIANTS if a not in retrofit.POLICY and a not in retrofit._REFUSED]
    assert not undecided, f"add these blocks to zoo.weights.retrofit.POLICY (or _REFUSED): {undecided}"


def _retrofittable():
    from zoo.models.resnet import ATTN_VARIANTS

    return [a for a in ATTN_VARIANTS if a in retrofit.POLICY]


@pytest.mark.parametrize("attn", _retrofittable())
def test_retrofit_starts_as_the_backbone(attn, plain_resnet18, tmp_path):
    plain, path = plain_resnet18
    with pytest.warns(UserWarning, match="retrofitted") as rec:
        model = zoo.create(f"{attn}_resnet18", pretrained=str(path))
    report = model.load_report
    assert report.retrofitted and report.new and not report.reinitialized
    assert all(any(k.startswith(m + ".") for m in report.retrofitted) for k in report.new)
    assert report.retrofitted[0] in str(rec[0].message)
    gated = [m for m in model.modules() if isinstance(m, retrofit.ResidualGate)]
    assert (len(gated) > 0) == (retrofit.POLICY[attn] == "gate")

    x = torch.randn(2, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)

    model.train()
    model(x).logsumexp(1).sum().backward()
    new = {n: p for n, p in model.named_parameters() if n in report.new}
    assert new and all(p.grad is not None for p in new.values())
    assert any(p.grad.abs().sum() > 0 for p in new.values())
    for g in gated:
        assert g.gamma.grad is not None and g.gamma.grad.abs().item() > 0

    # A checkpoint saved from the retrofitted model (with its gamma keys) loads back as is.
    with torch.no_grad():
        for g in gated:
            g.gamma.fill_(0.5)
    model.eval()
    saved = tmp_path / "retrofitted.pth"
    torch.save(model.state_dict(), saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = zoo.create(f"{attn}_resnet18", pretrained=str(saved)).eval()
    assert again.load_report.new == [] and again.load_report.retrofitted == []
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_retrofit_from_catalog_tag(local_catalog):
    with pytest.warns(UserWarning, match="retrofitted"):
        model = zoo.create("cbam_resnet18", pretrained="resnet18.tv_in1k").eval()
    assert model.pretrained_cfg["entry"] == "resnet18.tv_in1k"  # the backbone weights' preprocessing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), local_catalog(x))


@pytest.mark.parametrize("attn", sorted(retrofit._REFUSED))
def test_conv_replacing_blocks_cannot_be_retrofitted(attn, plain_resnet18):
    _, path = plain_resnet18
    with pytest.raises(retrofit.RetrofitError, match=r"replaces (the |every )?3x3 convolution"):
        zoo.create(f"{attn}_resnet18", pretrained=str(path))


def test_residual_gate_math():
    block = torch.nn.Conv2d(4, 4, 1)
    gate = retrofit.ResidualGate(block)
    x = torch.randn(2, 4, 5, 6)
    assert torch.equal(gate(x), x)
    with torch.no_grad():
        gate.gamma.fill_(1.0)
    torch.testing.assert_close(gate(x), block(x))


def test_torchvision_file_in_torch_hub_cache_is_loaded_without_download(tmp_path, monkeypatch):
    """A resnet18 torchvision already downloaded (torch.hub's cache) serves pretrained=True: no mirror,
    no network (ZOO_OFFLINE), no copy in zoo's cache."""
    from zoo.weights import download as dl

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.delenv("ZOO_MIRROR", raising=False)
    ref = torchvision.models.resnet18(weights=None).eval()
    cfg = CAT["resnet18.tv_in1k"]
    target = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    monkeypatch.setitem(CAT, cfg.name, dataclasses.replace(cfg, sha256=dl.sha256_file(target)))
    model = zoo.create("resnet18", pretrained=True).eval()
    assert model.pretrained_cfg["source"] == cfg.url and not dl.cache_path(cfg.url).exists()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_pretrained_url_serving_an_error_page_is_not_cached(tmp_path, monkeypatch):
    """An uncatalogued URL (no hash to check) that answers with an HTML page: a clear error, nothing
    cached, and the next call fetches again once the real file is there."""
    from zoo.weights import download as dl

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for var in ("ZOO_OFFLINE", "ZOO_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "server" / "models" / "resnet18-custom.pth"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"<!DOCTYPE html><html><head><title>Access denied</title></head><body></body></html>")
    url = served.as_uri()
    with pytest.raises(dl.UnreadableDownloadError, match="HTML page titled 'Access denied'"):
        zoo.create("resnet18", pretrained=url)
    assert not dl.cache_path(url).exists()
    ref = zoo.create("resnet18").eval()
    torch.save(ref.state_dict(), served)
    model = zoo.create("resnet18", pretrained=url).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
