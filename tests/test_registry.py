"""Registry behaviour: registration, lookup errors with suggestions, kwargs never swallowed."""
import pytest
import torch.nn as nn

import zoo
from zoo import registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register freely inside a test without leaking names into the real registries."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_BLOCKS", dict(registry._BLOCKS))


class _Tiny(nn.Module):
    def __init__(self, num_classes=1000, in_chans=3, width=4):
        super().__init__()
        self.fc = nn.Linear(in_chans * width, num_classes)


def test_register_and_create(scratch_registry):
    @zoo.register_model
    def tiny_thing(**kwargs):
        return _Tiny(**kwargs)

    assert "tiny_thing" in zoo.list_models("tiny*")
    m = zoo.create("tiny_thing", num_classes=5, in_chans=2, width=3)
    assert m.fc.in_features == 6 and m.fc.out_features == 5


def test_duplicate_model_raises(scratch_registry):
    @zoo.register_model
    def dup_model(**kwargs):
        return _Tiny(**kwargs)

    with pytest.raises(ValueError, match="already registered"):

        @zoo.register_model(name="dup_model")
        def other(**kwargs):
            return _Tiny(**kwargs)


def test_duplicate_block_raises(scratch_registry):
    @zoo.register_block("scratch_blk")
    class A(nn.Identity):
        pass

    with pytest.raises(ValueError, match="already registered"):
        zoo.register_block("scratch_blk")(A)


def test_unknown_model_suggests(scratch_registry):
    @zoo.register_model
    def cbam_tinynet(**kwargs):
        return _Tiny(**kwargs)

    with pytest.raises(ValueError, match="cbam_tinynet") as e:
        zoo.create("cbam_tinynt")
    assert "Did you mean" in str(e.value)


def test_unknown_block_suggests(scratch_registry):
    @zoo.register_block("zz_gate")
    class G(nn.Identity):
        def __init__(self, channels):
            super().__init__()

    with pytest.raises(ValueError, match="zz_gate"):
        zoo.create_block("zz_gat", 8)


def test_unknown_kwarg_is_type_error(scratch_registry):
    @zoo.register_model
    def tiny_kw(**kwargs):
        return _Tiny(**kwargs)

    with pytest.raises(TypeError, match="widht"):
        zoo.create("tiny_kw", widht=3)


def test_list_models_patterns_sorted(scratch_registry):
    for n in ("zz_b", "zz_a", "yy_c"):
        zoo.register_model(name=n)(lambda **kw: _Tiny(**kw))
    assert zoo.list_models("zz_*") == ["zz_a", "zz_b"]
    assert zoo.list_models("zz_a,yy_*") == ["yy_c", "zz_a"]
    everything = zoo.list_models()
    assert everything == sorted(everything)
