"""Every model family traces into one torch.compile graph (no graph break), in inference with
autocast (the cached-weight and cached-mask paths step aside: a data_ptr comparison broke Swin
into a graph per block, 0.91x timm compiled) and in training."""
import pytest
import torch

import zoo

CASES = [
    ("resnet18", {}, 32),
    *[(f"{a}_resnet18", {}, 32) for a in ("se", "cbam", "eca", "gc", "nl")],
    ("sa_resnet18", {"img_size": 32}, 32),
    ("vit_t_16", {"img_size": 32, "patch_size": 8, "depth": 2}, 32),
    ("swin_t", {"embed_dim": 24, "depths": (2, 2), "num_heads": (2, 4), "window_size": 4}, 36),  # padded, shifted
    ("swin_v2_t", {"embed_dim": 24, "depths": (2, 2), "num_heads": (2, 4), "window_size": 4}, 36),
    ("pvt_v2_b0", {"depths": (1, 1, 1, 1)}, 64),
    ("efficientvit_b0", {}, 64),  # the float32 (autocast-off) linear attention stays in the graph
    ("xcit_t12_16", {"depth": 2}, 48),
]


@pytest.mark.parametrize("name,kw,size", CASES, ids=[c[0] for c in CASES])
def test_one_graph(name, kw, size):
    model = zoo.create(name, num_classes=5, **kw)
    x = torch.randn(2, 3, size, size)
    for train in (False, True):
        torch._dynamo.reset()
        model.train(train)
        grad = torch.enable_grad() if train else torch.inference_mode()  # how the bench and eval.py run
        with grad, torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)  # an eager call first fills the weight / mask caches, as a benchmark warm-up does
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, (train, [str(b.reason) for b in explained.break_reasons])
        assert explained.graph_count == 1
