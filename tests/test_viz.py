"""zoo.viz: attention capture per block family, Swin stitching, CAMs, the CLI, in-box scoring."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.viz import attention_rollout, capture_attention, window_partition_map, window_stitch_map
from zoo.viz.inbox import score_maps

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
TINY_SWIN = dict(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4)


def _eval(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = zoo.create(name, num_classes=5, **kw).eval()
    # Give zero-initialised residual blocks (nl, gc, Swin v2 norms) real outputs.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim == 1 and torch.all(p == 0) and ("norm" in n or "fc2" in n):
                p.normal_(0, 0.5)
    return m


# ---- blocks: shapes and ranges ------------------------------------------------------------------
@pytest.mark.parametrize("block", ["se", "eca", "cbam", "gc", "nl", "sa"])
def test_block_capture_shapes_and_ranges(block):
    torch.manual_seed(0)
    m = zoo.create_block(block, 32, **({"feat_size": (5, 7)} if block == "sa" else {})).eval()
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad(), capture_attention(m) as maps:
        m(x)
    kinds = set(maps.kinds.values())
    assert kinds, "nothing captured"
    for key, v in maps.items():
        kind = maps.kinds[key]
        if kind == "channel":
            assert v.shape == (2, 32) and v.min() >= 0 and v.max() <= 1
        elif kind == "spatial":
            assert v.shape == (2, 5, 7) and v.min() >= 0 and v.max() <= 1
        elif kind == "context":
            assert v.shape == (2, 5, 7)
            torch.testing.assert_close(v.sum((1, 2)), torch.ones(2))
        elif kind == "query":
            heads = 4 if block == "sa" else 1
            assert v.shape == (2, heads, 2, 5, 7)  # default queries: centre, argmax
            torch.testing.assert_close(v.sum((-2, -1)), torch.ones(2, heads, 2))
            q = maps.meta[key]["queries"]
            assert q.shape == (2, 2, 2) and q[0, 0].tolist() == [2, 3]
            # argmax query is the largest-norm position
            flat = x.norm(dim=1).flatten(1).argmax(1)
            assert q[:, 1, 0].tolist() == (flat // 7).tolist() and q[:, 1, 1].tolist() == (flat % 7).tolist()
        elif kind == "received":
            torch.testing.assert_close(v.sum((-2, -1)), torch.ones(v.shape[:2]))
    expected = {"se": {"channel"}, "eca": {"channel"}, "cbam": {"channel", "spatial"},
                "gc": {"context", "channel_add"}, "nl": {"query", "received"}, "sa": {"query", "received"}}[block]
    assert kinds == expected


def test_gate_capture_matches_block_gate():
    torch.manual_seed(0)
    cbam = zoo.create_block("cbam", 16).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad(), capture_attention(cbam) as maps:
        cbam(x)
        ch = cbam.channel.gate(x)
        sp = cbam.spatial.gate(cbam.channel(x))
    torch.testing.assert_close(maps["channel"], ch.flatten(1))
    torch.testing.assert_close(maps["spatial"], sp[:, 0])


def test_query_rows_are_the_attention_used():
    """The captured rows reproduce the block's fused output (probabilities @ values)."""
    torch.manual_seed(0)
    nl = zoo.create_block("nl", 8).eval()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad(), capture_attention(nl, keep_full=True) as maps:
        nl(x)
        y = nl.attend(x)
        _, _, v = nl._tokens(x)
    full = maps.full[""]  # B, 1, HW, HW
    torch.testing.assert_close((full @ v).squeeze(1).transpose(1, 2).reshape_as(y), y, atol=1e-5, rtol=1e-4)


# ---- capture leaves the model alone ---------------------------------------------------------------
@pytest.mark.parametrize("name,kw,size", [
    ("cbam_resnet18", {}, 32), ("nl_resnet18", {}, 32), ("sa_resnet18", {"img_size": 32}, 32),
    ("vit_t_16", TINY_VIT, 32), ("swin_t", TINY_SWIN, 36), ("swin_v2_t", TINY_SWIN, 36),
])
def test_capture_off_bit_identical_and_fused(name, kw, size, monkeypatch):
    model = _eval(name, **kw)
    x = torch.randn(2, 3, size, size)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]  # zoo.accel's layout hook
    with torch.no_grad():
        before = model(x)
        n_fused = len(calls)
        with capture_attention(model) as maps:
            during = model(x)
        n_during = len(calls) - n_fused
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert len(maps) > 0
    # The model's own forward takes the fused path, the same number of times, capture or not.
    assert n_during == n_fused == len(calls) - n_fused - n_during
    if name != "cbam_resnet18":
        assert n_fused > 0
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]  # all removed


# ---- ViT ----------------------------------------------------------------------------------------
def test_vit_cls_maps_and_rollout():
    model = _eval("vit_t_16", **TINY_VIT)
    x = torch.randn(2, 3, 32, 40)  # 4 x 5 patch grid
    with torch.no_grad(), capture_attention(model, keep_full=True) as maps:
        model(x)
    for i in range(2):
        cls = maps[f"blocks.{i}.attn"]
        assert cls.shape == (2, 3, 4, 5) and maps.kinds[f"blocks.{i}.attn"] == "cls"
        full = maps.full[f"blocks.{i}.attn"]
        torch.testing.assert_close(cls, full[:, :, 0, 1:].reshape(2, 3, 4, 5))
        assert full.shape == (2, 3, 21, 21)
        torch.testing.assert_close(full.sum(-1), torch.ones(2, 3, 21))
    roll = maps["rollout"]
    assert roll.shape == (2, 4, 5) and maps.kinds["rollout"] == "rollout"
    expected = attention_rollout([maps.full["blocks.0.attn"], maps.full["blocks.1.attn"]])
    torch.testing.assert_close(roll, expected[:, 0, 1:].reshape(2, 4, 5))


def test_vit_probabilities_reproduce_output():
    torch.manual_seed(0)
    from zoo.models.vit import Attention

    attn = Attention(24, 3).eval()
    x = torch.randn(2, 7, 24)
    with torch.no_grad(), capture_attention(attn, keep_full=True) as maps:
        y = attn(x)
        v = attn.qkv(x).view(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)[2]
        ref = attn.proj((maps.full[""] @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_attention_rollout_identity_mixing():
    eye = torch.eye(3).expand(1, 2, 3, 3)
    torch.testing.assert_close(attention_rollout([eye, eye]), torch.eye(3)[None])
    uniform = torch.full((1, 1, 2, 2), 0.5)
    # one layer: 0.5 I + 0.5 * uniform
    torch.testing.assert_close(attention_rollout([uniform]), torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]))


# ---- Swin ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,window,shift", [((8, 8), (4, 4), (0, 0)), ((9, 10), (4, 4), (2, 2)),
                                               ((7, 5), (3, 3), (1, 1)), ((4, 6), (4, 3), (0, 1))])
def test_swin_stitch_round_trip(size, window, shift):
    pattern = torch.arange(2 * 3 * size[0] * size[1], dtype=torch.float32).view(2, 3, *size)
    w = window_partition_map(pattern, window, shift)
    nw = -(-size[0] // window[0]) * -(-size[1] // window[1])
    assert w.shape == (2 * nw, 3, window[0] * window[1])
    assert torch.equal(window_stitch_map(w, size, window, shift), pattern)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_partition_matches_the_block(name):
    """Our window cut equals the tokens the block feeds its attention (shift and padding included)."""
    model = _eval(name, mask_padding=True, **TINY_SWIN)  # padded keys masked: real positions hold mass 1
    x = torch.randn(1, 3, 36, 44)  # 9 x 11 map, windows of 4: padded and shifted
    seen = {}
    blk = model.layers[0].blocks[1]  # shifted block
    h1 = blk.attn.register_forward_pre_hook(lambda m, a: seen.update(tokens=a[0], geometry=a[1]))
    h2 = blk.register_forward_pre_hook(lambda m, a: seen.update(inp=a[0]))
    with torch.no_grad(), capture_attention(model, keep_full=True) as maps:
        model(x)
    h1.remove(), h2.remove()
    H, W, Hp, Wp, window, shift, _ = seen["geometry"]
    assert shift == (2, 2) and (Hp, Wp) != (H, W)
    normed = blk.norm1(seen["inp"]) if name == "swin_t" else seen["inp"]  # v2 is post-norm
    ours = window_partition_map(normed.permute(0, 3, 1, 2), window, shift)  # B*nW, C, N
    torch.testing.assert_close(ours.transpose(1, 2), seen["tokens"])
    key = "layers.0.blocks.1.attn"
    m = maps[key]
    assert m.shape == (1, 2, 9, 11) and maps.kinds[key] == "window"
    assert m.min() >= 0
    # each window's real positions receive the attention of its real queries: mass 1 per window and head
    torch.testing.assert_close(window_partition_map(m, window, shift).sum(-1), torch.ones(9, 2))
    # the explicit probabilities reproduce the fused window attention
    attn = blk.attn
    with torch.no_grad():
        Bw, N, C = seen["tokens"].shape
        v = attn._project_qkv(seen["tokens"]).view(Bw, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
        ref = attn.proj((maps.full[key] @ v).transpose(1, 2).reshape(Bw, N, C))
        torch.testing.assert_close(attn(seen["tokens"], seen["geometry"]), ref, atol=1e-4, rtol=1e-4)


# ---- CAMs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw,size", [("resnet18", {}, 64), ("vit_t_16", TINY_VIT, 32), ("swin_t", TINY_SWIN, 32)])
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_cam_runs(name, kw, size, method):
    from zoo.viz.cam import compute_cam

    model = _eval(name, **kw)
    cam = compute_cam(model, torch.randn(2, 3, size, size), method)
    assert cam.shape == (2, size, size) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert cam.max() > 0.99  # min-max scaled, so a non-constant map reaches 1
    assert not any(m._forward_hooks for m in model.modules())


# ---- in-box scoring ---------------------------------------------------------------------------------
def test_score_maps():
    boxes = torch.tensor([[2, 2, 6, 6], [0, 0, 8, 8]])
    maps = torch.zeros(2, 8, 8)
    maps[0, 3, 3] = 1.0
    maps[1] = 1.0
    share, hit = score_maps(maps, boxes, (8, 8))
    torch.testing.assert_close(share, torch.tensor([1.0, 1.0]))
    assert hit.tolist() == [True, True]
    share, hit = score_maps(torch.ones(1, 4, 4), torch.tensor([[0, 0, 8, 4]]), (8, 8))  # uniform, half box
    torch.testing.assert_close(share, torch.tensor([0.5]))


# ---- CLI --------------------------------------------------------------------------------------------
def test_cli_writes_files(tmp_path):
    import cv2
    import numpy as np
    from hydra import compose, initialize_config_dir

    from zoo.viz.__main__ import CONFIG_DIR, viz

    for i in range(2):  # a folder of two images, different sizes than the model's
        cv2.imwrite(str(tmp_path / f"im{i}.png"), (np.random.default_rng(i).random((40, 48, 3)) * 255).astype("uint8"))
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("viz", overrides=["model=cbam_resnet18", f"image={tmp_path}", "data.img_size=64",
                                        "num_classes=3", "cams=[gradcam]", f"out_dir={out}"])
    index = viz(cfg)
    assert index.is_file()
    for i in range(2):
        d = out / f"im{i}"
        for f in ("cam.png", "overview.png", "channels.png", "layers/layer4.1.attn.spatial.png"):
            assert (d / f).stat().st_size > 1000, f
    assert "im1/cam.png" in index.read_text()


def test_checkpoint_roundtrip(tmp_path):
    """A Lightning-style checkpoint (``model.`` keys, ``zoo`` entry) rebuilds the same model."""
    from zoo.viz.load import load_model

    model = zoo.create("eca_resnet18", num_classes=4).eval()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "zoo": {"model_name": "eca_resnet18", "num_classes": 4, "class_names": list("abcd"),
                    "data_config": {"img_size": 32}, "model_kwargs": {}}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded, info = load_model(ckpt_path=tmp_path / "last.ckpt")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert info["class_names"] == list("abcd") and info["data_config"]["img_size"] == 32
    with pytest.raises(ValueError, match="checkpoint holds"):
        load_model("resnet18", ckpt_path=tmp_path / "last.ckpt")


# Trains a CNN for a minute to judge the CAM against the box: the slow run (CI) keeps it.
@pytest.mark.slow
def test_trained_cam_looks_inside_the_box():
    """A ResNet-18 trained briefly on cluttered digits puts its Grad-CAM mass on the digit's box,
    by a margin that broken maps (uniform, random, or the map of another image) do not reach.

    Grad-CAM is taken at ``layer2`` (8x8 at 64 px): ``layer4`` is 2x2 there, too coarse to place a
    24 px digit (layer2 after this training measured: in-box share 0.40-0.46, pointing hit 0.67-0.86 with 1-2
    threads, uniform 0.14).
    """
    from zoo.data import ensure_embedded
    from zoo.data.embedded import read_boxes
    from zoo.viz.cam import compute_cam
    from zoo.viz.load import load_images

    root = ensure_embedded("cluttered_digits")
    cfg = {"img_size": 64, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    files = sorted((root / "train").rglob("*.png"))
    x = load_images(files, cfg)
    y = torch.tensor([int(f.parent.name) for f in files])
    torch.manual_seed(0)
    model = zoo.create("resnet18", num_classes=10)
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # Decaying to 0 makes the end point stable (a constant rate oscillates, measured in-box share
    # 0.17-0.46 over steps 100-200, and differently with 1 or 2 threads).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(files), (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()

    val = sorted(read_boxes(root, "val").items())[:100]
    xv = load_images([root / "val" / p for p, _ in val], cfg)
    boxes = torch.tensor([b for _, b in val])
    cam = torch.from_numpy(compute_cam(model, xv, "gradcam", target_layer=model.layer2[-1]))  # B, 64, 64
    baseline = float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().mean() / 64**2)

    def scores(maps, b=boxes):
        share, hit = score_maps(maps, b, (64, 64))
        return float(share.mean()), float(hit.float().mean())

    def looks_inside(share, hit):
        return share > baseline + 0.1 and hit > 3 * baseline

    share, hit = scores(cam)
    assert looks_inside(share, hit), (share, hit, baseline)
    g = torch.Generator().manual_seed(0)
    controls = {
        "uniform": scores(torch.ones_like(cam)),
        "random": scores(torch.rand(cam.shape, generator=g)),
        "random 8x8": scores(torch.rand(len(cam), 8, 8, generator=g)),
        "other image's map": scores(cam, boxes.roll(1, 0)),
    }
    for name, (s, h) in controls.items():
        assert not looks_inside(s, h), (name, s, h, baseline)
    other_share, other_hit = controls["other image's map"]
    assert share > other_share + 0.05 and hit > other_hit + 0.3, (share, hit, other_share, other_hit)


def test_inbox_cli_scores_every_layer(tmp_path, capsys):
    """``python -m zoo.viz.inbox CKPT --layers all``: a row per captured spatial map and the CAM,
    shares and hits in [0, 1], the uniform share equal to the mean box area (24 px box, 64 px canvas)."""
    from zoo.viz.inbox import main as inbox_main

    model = zoo.create("cbam_resnet18", num_classes=10).eval()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "zoo": {"model_name": "cbam_resnet18", "num_classes": 10, "class_names": [str(i) for i in range(10)],
                    "data_config": {"img_size": 64, "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                    "interpolation": "bilinear", "crop_pct": 1.0}, "model_kwargs": {}}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    inbox_main([str(tmp_path / "last.ckpt"), "--limit", "8", "--layers", "all"])
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.strip().splitlines()[2:]]
    maps = [r[1].strip() for r in rows]
    # 8 CBAM spatial gates (one per block, the deepest first as the summary) and Grad-CAM
    assert len(maps) == 9 and maps[0] == "attn layer4.1.attn.spatial" and maps[-1] == "cam gradcam"
    assert len(set(maps)) == 9
    for r in rows:
        share, uniform, hit = float(r[3]), float(r[4]), float(r[5])
        assert 0 <= share <= 1 and 0 <= hit <= 1 and uniform == pytest.approx(24**2 / 64**2, abs=1e-3)
    with pytest.raises(SystemExit):
        inbox_main([str(tmp_path / "last.ckpt"), "--layers", "some"])
