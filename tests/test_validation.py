"""Bad architecture arguments are refused at construction, naming the argument, its value and the valid
range, instead of building a model that fails (or silently misbehaves) in its first forward."""
from __future__ import annotations

import re

import pytest

import zoo

FAMILIES = {"resnet18": {}, "vit_t_16": {}, "swin_t": {}, "swin_v2_t": {}}

BAD_MODEL_ARGS = [
    ("num_classes", -3),
    ("in_chans", 0),
    ("drop_path_rate", 2),
    ("drop_path_rate", -0.1),
]
BAD_FAMILY_ARGS = [
    ("vit_t_16", "patch_size", 0),
    ("vit_t_16", "num_heads", 0),
    ("vit_t_16", "depth", 0),
    ("vit_t_16", "embed_dim", 0),
    ("vit_t_16", "drop_rate", 1.5),
    ("vit_t_16", "mlp_ratio", 0),
    ("swin_t", "window_size", 0),
    ("swin_t", "window_size", (7, 0)),
    ("swin_t", "patch_size", 0),
    ("swin_t", "depths", (2, 2, 0, 2)),
    ("swin_t", "num_heads", (3, 0, 12, 24)),
    ("swin_t", "embed_dim", 0),
    ("swin_v2_t", "window_size", 0),
    ("resnet18", "layers", (2, 0, 2, 2)),
    ("resnet18", "img_size", 0),
]


def _match(name: str, value) -> str:
    return rf"{name}.*{re.escape(repr(value))}|{re.escape(repr(value))}.*{name}"


@pytest.mark.parametrize("model", list(FAMILIES))
@pytest.mark.parametrize("name,value", BAD_MODEL_ARGS)
def test_bad_common_argument_is_refused_at_construction(model, name, value):
    with pytest.raises(ValueError, match=_match(name, value)):
        zoo.create(model, **{name: value})


@pytest.mark.parametrize("model,name,value", BAD_FAMILY_ARGS)
def test_bad_family_argument_is_refused_at_construction(model, name, value):
    with pytest.raises(ValueError, match=_match(name, value)):
        zoo.create(model, **{name: value})


@pytest.mark.parametrize("model", list(FAMILIES))
def test_edge_values_that_are_valid_still_build(model):
    zoo.create(model, num_classes=0, in_chans=1, drop_path_rate=0.0)


@pytest.mark.parametrize("block", zoo.list_blocks())
@pytest.mark.parametrize("channels", [0, -1])
def test_block_with_no_channels_is_refused(block, channels):
    with pytest.raises(ValueError, match=_match("channels", channels)):
        zoo.create_block(block, channels)


@pytest.mark.parametrize("block,kw", [
    ("se", {"rd_ratio": 0}), ("se", {"rd_channels": 0}), ("cbam", {"rd_ratio": -1.0}),
    ("cbam", {"spatial_kernel_size": 0}), ("gc", {"rd_channels": 0}), ("nl", {"rd_ratio": 0}),
    ("nl", {"attn_drop": 1.0}), ("eca", {"kernel_size": -1}), ("sa", {"num_heads": 0}), ("sa", {"feat_size": 0}),
])
def test_block_bad_keyword_is_refused(block, kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=_match(name, value)):
        zoo.create_block(block, 64, **kw)
