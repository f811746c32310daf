"""The block table (python -m zoo.bench.blocks): every registered block has its data, its docstring cites the
paper the data says, counts are right (SDPA included), and a forgotten block shows as "?"."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo
from zoo.bench import blocks
from zoo.bench.blocks import BLOCK_INFO, GROUPS, block_rows, block_stats, markdown_table, paper_of
from zoo.flops import count_macs, sdpa_macs

# Issue #12's block list: the table data covers all of them, registered in this checkout or not.
ISSUE_12 = ("se cbam eca gc nl sa sk splat lambda halo ese ge ceca fca gct srm simam triplet coord bam sge "
            "shuffle scse lka bat a2 ea cc danet psa aa").split()


def test_every_registered_block_has_table_data():
    missing = [n for n in zoo.list_blocks() if n not in BLOCK_INFO]
    assert not missing, f"add {missing} to zoo.bench.blocks.BLOCK_INFO (group, reference, title word)"


def test_table_data_covers_the_issue_list_with_survey_groups():
    assert set(ISSUE_12) <= set(BLOCK_INFO), sorted(set(ISSUE_12) - set(BLOCK_INFO))
    assert {i.group for i in BLOCK_INFO.values()} == set(GROUPS)
    assert all(i.reference and i.title_word for i in BLOCK_INFO.values())


@pytest.mark.parametrize("name", zoo.list_blocks())
def test_docstring_cites_the_paper_the_table_names(name):
    paper = paper_of(name)
    assert paper is not None, f"{name}: its module docstring's first paragraph cites no 'Title. Authors, Year.'"
    assert 2010 <= paper["year"] <= 2030
    if name in BLOCK_INFO:
        assert BLOCK_INFO[name].title_word.casefold() in paper["title"].casefold(), (name, paper["title"])


def test_paper_parse_and_arxiv_year_fallback(monkeypatch):
    assert paper_of("eca") == {"title": "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
                               "year": 2020, "arxiv": "1910.03151"}
    mod = __import__(zoo.get_block("se").__module__, fromlist=["_"])
    monkeypatch.setattr(mod, "__doc__", "Squeeze-and-Excitation Networks (arXiv:1709.01507), the SE block.\n\nMore.")
    assert paper_of("se") == {"title": "Squeeze-and-Excitation Networks", "year": 2017, "arxiv": "1709.01507"}


def test_counts_are_the_formulas():
    # SE at 256 channels: 1x1 convs 256 -> 16 -> 256 with biases on the pooled map.
    assert block_stats("se") == {"params": 256 * 16 + 16 + 16 * 256 + 256, "macs": 2 * 256 * 16}
    # ECA: one 1-D conv of 5 taps (the adaptive size for 256 channels) over the 256 pooled values.
    assert block_stats("eca") == {"params": 5, "macs": 256 * 5}
    # Non-local: four 1x1 convs over 56 x 56 positions plus the SDPA over all pairs of them.
    hw, rd = 56 * 56, 128
    want = 4 * 256 * rd * hw + sdpa_macs((1, 1, hw, rd), (1, 1, hw, rd), (1, 1, hw, rd))
    assert block_stats("nl")["macs"] == want


class _Sdpa(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):  # x: [B, heads, N, d]
        return F.scaled_dot_product_attention(x, x, x, **self.kw)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("kw", [{}, {"attn_mask": torch.zeros(64, 64)}, {"scale": 0.5}], ids=["plain", "mask", "scale"])
def test_flops_counts_sdpa_on_every_path(device, kw):
    """The CPU flash kernel (with or without a mask) is counted, not zero as FlopCounterMode alone has it."""
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    shape = (2, 4, 64, 16)
    assert count_macs(_Sdpa(**kw), torch.zeros(shape, device=device)) == sdpa_macs(shape, shape, shape) == 2 * 4 * 64 * 64 * 32


def test_missing_block_shows_question_marks(monkeypatch):
    monkeypatch.delitem(BLOCK_INFO, "se")
    (row,) = block_rows(["se"])
    assert row["group"] == "?" and row["reference"] == "?"
    assert "| ? | 8.46K | 8.19K | ? |" in markdown_table(["se"])


def test_cli_prints_the_table(capsys):
    blocks.main(["se", "nl", "--size", "14"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| block | paper (year) | group |") and "MACs (14x14)" in out[0]
    assert out[2].startswith("| `se` | [Squeeze-and-Excitation Networks](https://arxiv.org/abs/1709.01507) (2018) | channel |")
    assert out[3].startswith("| `nl` |") and out[3].endswith("| timm NonLocalAttn |")
    with pytest.raises(SystemExit):
        blocks.main(["sqeeze"])
