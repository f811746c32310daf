"""Swin Transformer (arXiv 2103.14030) / Swin Transformer V2 (arXiv 2111.09883) checkpoint converters.

Detects the layout of a Swin state dict (zoo, timm >= 0.9, the official microsoft/Swin-Transformer
repo or timm < 0.9, torchvision) from its keys and renames it into zoo's names, resampling v1
relative position tables to the model's window.

Layouts, by stage i and block j (zoo's names on the right):

- timm >= 0.9: identical to zoo except ``head.fc.*`` -> ``head.*``.
- official (``{"model": sd}``, unwrapped by ``read_state_dict``): patch merging closes stage i
  (``layers.i.downsample.*``) where zoo opens stage i + 1 with it (``layers.{i+1}.downsample.*``);
  the ``attn_mask``, ``relative_position_index`` and ``relative_coords_table`` buffers are dropped.
- torchvision: ``features.0.0`` / ``features.0.2`` -> ``patch_embed.proj`` / ``patch_embed.norm``;
  ``features.{2i+1}.j.*`` -> ``layers.i.blocks.j.*`` (``mlp.0`` / ``mlp.3`` -> ``mlp.fc1`` / ``mlp.fc2``);
  ``features.{2i}.*`` (i >= 1) -> ``layers.i.downsample.*``; v2's ``qkv.bias`` is split into
  ``q_bias`` and ``v_bias`` after checking that its k slice, which torchvision never uses, is zero.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["checkpoint_filter_fn", "detect_layout", "resize_relative_position_bias_table"]

_BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """One of ``"torchvision"``, ``"official"``, ``"timm"``, ``"zoo"``, judged from the keys."""
    keys = set(state_dict)
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if any(k.startswith("layers.0.downsample.") for k in keys):
        return "official"
    if any(k.startswith("head.fc.") for k in keys):
        return "timm"
    return "zoo"


def resize_relative_position_bias_table(table: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a v1 table ``[(2w-1)^2, heads]`` to ``[(2wh-1)*(2ww-1), heads]``.

    Same resampling as the official repo's ``load_pretrained`` (bicubic, ``align_corners=False``).
    """
    n, heads = table.shape
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"relative_position_bias_table has {n} rows, not a square (2w-1)^2 grid.")
    size = (2 * window[0] - 1, 2 * window[1] - 1)
    if (side, side) == size:
        return table
    grid = table.float().t().reshape(1, heads, side, side)  # 1, heads, 2w-1, 2w-1
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).t().contiguous().to(table.dtype)  # (2wh-1)*(2ww-1), heads


def _from_torchvision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("features.0.0."):
            out["patch_embed.proj." + k[len("features.0.0."):]] = v
        elif k.startswith("features.0.2."):
            out["patch_embed.norm." + k[len("features.0.2."):]] = v
        elif m := re.match(r"features\.(\d+)\.(.*)", k):
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2:  # a stage's blocks
                rest = re.sub(r"^(\d+)\.mlp\.0\.", r"\1.mlp.fc1.", rest)
                rest = re.sub(r"^(\d+)\.mlp\.3\.", r"\1.mlp.fc2.", rest)
                out[f"layers.{idx // 2}.blocks.{rest}"] = v
            else:  # patch merging opening stage idx // 2
                out[f"layers.{idx // 2}.downsample.{rest}"] = v
        else:
            out[k] = v
    # torchvision's v2 qkv.bias carries a k slice that its forward zeroes before every use, so the
    # slice never reaches the output whatever it holds (a fine-tuned file can have it non-zero):
    # zoo keeps only the q and v biases, the same network.
    for k in [k for k in out if k.endswith("attn.qkv.bias") and k[: -len("qkv.bias")] + "logit_scale" in out]:
        q, _k_unused, v = out.pop(k).chunk(3)
        out[k[: -len("qkv.bias")] + "q_bias"] = q
        out[k[: -len("qkv.bias")] + "v_bias"] = v
    return out


def _from_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else k] = v
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a torchvision, timm, official or zoo Swin v1/v2 state dict to ``model``'s names.

    Derived buffers are dropped; v1 relative position tables are resampled to the model's window.
    Classifier size and input channels are adapted afterwards by the generic loader.
    """
    layout = detect_layout(state_dict)
    sd = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
    if layout == "torchvision":
        sd = _from_torchvision(sd)
    elif layout == "official":
        sd = _from_official(sd)
    elif layout == "timm":
        sd = {("head." + k[len("head.fc."):] if k.startswith("head.fc.") else k): v for k, v in sd.items()}
    own = model.state_dict()
    for k, v in sd.items():
        if k.endswith("relative_position_bias_table") and k in own and own[k].shape != v.shape:
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            sd[k] = resize_relative_position_bias_table(v, attn.window_size)
    return sd
