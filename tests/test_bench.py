"""The benchmark harness on tiny models with a fake clock, the twin table, and the README table."""
import csv

import pytest
import torch
import torch.nn as nn

import zoo
from zoo.bench import COLUMNS, NO_TWIN, BenchCase, Impl, run_bench, twins_for, write_outputs
from zoo.bench.__main__ import main as bench_main
from zoo.bench.harness import cases_from_registry
from zoo.bench.measure import paired_ratio, time_interleaved
from zoo.bench.table import END, START, bench_lookup, build_table, model_stats, rewrite_readme


class Clock:
    """A fake timer: each forward of a tiny model advances it by that model's cost."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now


class Tiny(nn.Module):
    def __init__(self, name: str, cost: float, clock: Clock, width: int = 4):
        super().__init__()
        self.name, self.cost, self.clock = name, cost, clock
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        self.clock.now += self.cost
        self.clock.calls.append(self.name)
        return self.head(self.conv(x).mean((2, 3)))


def _impl(name, cost, clock, library="ref", width=4):
    return Impl(library, name, lambda size: Tiny(name, cost, clock, width))


def _run(cases, clock, **kw):
    kw = {"batch": 2, "repeats": 3, "warmup": 1, "modes": ("infer", "train"), "ceilings": {"fp32": 100.0},
          "timer": clock, "log": lambda msg: None, **kw}
    return run_bench(cases, **kw)


@pytest.fixture
def clock():
    return Clock()


def test_rows_filled_and_ratios_from_interleaved_rounds(clock):
    case = BenchCase("tiny", _impl("zoo:tiny", 2.0, clock, "zoo"),
                     [_impl("ref:fast", 1.0, clock), _impl("ref:slow", 4.0, clock)], img_size=8)
    rows = _run([case], clock)
    assert len(rows) == 2 * 3
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert all(r[k] not in (None, "") for k in COLUMNS if k != "note"), r
    for mode in ("infer", "train"):
        by_impl = {r["impl"]: r for r in rows if r["mode"] == mode}
        zoo_row = by_impl["zoo:tiny"]
        assert zoo_row["vs"] == "ref:fast"  # the fastest twin
        assert zoo_row["ratio"] == pytest.approx(0.5)  # zoo takes 2 ticks, fast twin 1
        assert by_impl["ref:slow"]["ratio"] == pytest.approx(2.0)
        assert zoo_row["img_s"] == pytest.approx(2 / 2.0)
        flops = {"infer": 2, "train": 6}[mode] * zoo_row["gmacs"] * 1e9 * zoo_row["img_s"] / 1e9
        assert zoo_row["gflop_s"] == pytest.approx(flops)
        assert zoo_row["frac_of_ceiling"] == pytest.approx(flops / 100.0)
    # the rounds ran round-robin, an untimed call of each model before its timed one
    one_round = [name for name in ("zoo:tiny", "ref:fast", "ref:slow") for _ in range(2)]
    assert clock.calls[-18:] == one_round * 3


def test_interleaving_does_not_charge_one_model_for_the_other():
    """A step that is slower right after the other model's step (as a CPU step is after another
    model's has left the allocator's heap in a different shape) is timed as it runs on its own."""
    clock, last = Clock(), []

    def make(name, penalty_after_other):
        def step():
            clock.now += 1.0 + (penalty_after_other if last and last[-1] != name else 0.0)
            last.append(name)
        return step

    times = time_interleaved([make("a", 0.5), make("b", 0.0)], device="cpu", repeats=4, timer=clock)
    assert paired_ratio(times[0], times[1]) == pytest.approx(1.0)  # round-robin alone gave 1 / 1.5


def test_model_without_twin_reported(clock, tmp_path):
    rows = _run([BenchCase("lonely", _impl("zoo:lonely", 1.0, clock, "zoo"), [], img_size=8)], clock,
                modes=("infer",))
    (row,) = rows
    assert row["vs"] == NO_TWIN and row["ratio"] is None
    paths = write_outputs(rows, {"cpu": "test"}, {"fp32": 100.0}, tmp_path)
    assert NO_TWIN in paths["md"].read_text()


def test_twin_with_other_architecture_flagged(clock):
    case = BenchCase("tiny", _impl("zoo:tiny", 1.0, clock, "zoo"), [_impl("ref:wide", 1.0, clock, width=8)],
                     img_size=8)
    rows = _run([case], clock, modes=("infer",))
    assert "params differ" in next(r for r in rows if r["impl"] == "ref:wide")["note"]


def test_outputs_written(clock, tmp_path):
    case = BenchCase("tiny", _impl("zoo:tiny", 2.0, clock, "zoo"), [_impl("ref:a", 1.0, clock)], img_size=8)
    rows = _run([case], clock, precisions=("fp32", "bf16"), ceilings={"fp32": 100.0, "bf16": 400.0})
    paths = write_outputs(rows, {"cpu": "fake cpu", "torch": torch.__version__}, {"fp32": 100.0}, tmp_path)
    with paths["csv"].open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) == 8 and list(back[0]) == COLUMNS
    md = paths["md"].read_text()
    assert "fake cpu" in md and md.count("| tiny |") == 8
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{"compile": True}, {"freeze": True}, {"channels_last": True}])
def test_compile_freeze_and_channels_last_run_through_the_harness(flags):
    """The compiled, frozen and channels-last paths run inference and a training step, real clock."""
    def plain(size):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 5))

    case = BenchCase("tiny", Impl("zoo", "zoo:tiny", plain), [Impl("ref", "ref:tiny", plain)], img_size=8)
    rows = run_bench([case], batch=2, repeats=2, warmup=2, modes=("infer", "train"), ceilings={"fp32": 100.0},
                     log=lambda msg: None, **flags)
    assert len(rows) == 4 and all(r["img_s"] > 0 and r["ratio"] > 0 for r in rows)
    expected = {"compile": "inductor", "freeze": "inductor+freezing"}.get(next(iter(flags)), "eager")
    assert {r["compile"] for r in rows} == {expected}
    assert {r["channels_last"] for r in rows} == {bool(flags.get("channels_last"))}


def test_cli_list(capsys):
    assert bench_main(["resnet*", "--list"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == len(zoo.list_models("resnet*"))


def test_cli_rejects_bad_precision():
    with pytest.raises(SystemExit):
        bench_main(["resnet18", "--precision", "fp8"])


_WITH_TWINS = [n for n in zoo.list_models() if twins_for(n)]


@pytest.mark.parametrize("name", _WITH_TWINS)
def test_twins_have_zoo_parameter_count(name):
    # built on meta: no memory or init cost. Same parameter count is the cheap architecture check
    # (within the harness's 0.1%: torchvision's Swin v2 keeps an always-zero k bias as a parameter).
    with torch.device("meta"):
        ours = sum(p.numel() for p in zoo.create(name).parameters())
        for twin in twins_for(name):
            theirs = sum(p.numel() for p in twin.factory(224 if "v2" not in name else 256).parameters())
            assert theirs == pytest.approx(ours, rel=1e-3), twin.name


def test_table_lists_exactly_the_registry(tmp_path):
    fake = lambda name: {"params": 1e6, "macs": 2e9, "img_size": 224}  # noqa: E731
    names = zoo.list_models()
    bench_rows = [{"model": names[0], "library": "zoo", "device": "cpu", "precision": "fp32", "mode": "infer",
                   "img_s": 12.5, "ratio": 0.9, "vs": "timm:x"}]
    path = tmp_path / "b.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in bench_rows)
    table = build_table(bench=bench_lookup([path]), stats_fn=fake)
    listed = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert listed == names
    assert "| 12.5 | 0.90x timm:x |" in table.splitlines()[2]
    assert table.splitlines()[3].endswith("| - | - |")

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nrest\n")
    rewrite_readme(readme, table)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n") and table in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="models-table"):
        rewrite_readme(readme, table)


def test_model_stats_real_model():
    s = model_stats("resnet18")
    assert s["img_size"] == 224
    assert s["params"] == 11_689_512
    assert s["macs"] / 1e9 == pytest.approx(1.814, rel=0.01)  # torchvision's ResNet18 _ops


def test_table_top1_comes_from_the_default_catalog_entry():
    from zoo.bench.table import build_table, catalog_top1

    assert catalog_top1("swin_t") == (81.474, "tv_in1k")
    assert catalog_top1("nl_resnet50") is None  # no published weights: '-' in the table
    table = build_table(["swin_t", "nl_resnet50"], stats_fn=lambda n: {"params": 1e6, "macs": 1e9, "img_size": 224})
    assert "| `swin_t` | 1.0 | 1.00 | 224 | 81.5 (tv_in1k) |" in table
    assert "| `nl_resnet50` | 1.0 | 1.00 | 224 | - |" in table


def test_compare_plain_times_the_plain_zoo_model_beside_the_fast_one():
    """--compare-plain adds the plain zoo model; the zoo row is still compared with the other
    libraries only, and the plain row's ratio is accelerated / plain."""
    cases = cases_from_registry("resnet18", compare_plain=True)
    impls = [cases[0].impl, *cases[0].twins]
    assert [i.library for i in impls][:2] == ["zoo", "zoo-plain"]
    fast, plain = impls[0].factory(32), impls[1].factory(32)
    assert zoo.accel.techniques_applied(fast) and not zoo.accel.techniques_applied(plain)
    assert not zoo.accel.techniques_applied(cases_from_registry("resnet18", fast=False)[0].impl.factory(32))
    rows = run_bench(cases, batch=2, img_size=32, repeats=1, warmup=1, ceilings={"fp32": 100.0}, log=lambda m: None)
    by = {r["library"]: r for r in rows}
    assert by["zoo"]["vs"] in ("torchvision:resnet18", "timm:resnet18") and by["zoo-plain"]["vs"] == "zoo:resnet18"
    assert by["zoo-plain"]["ratio"] > 0


def test_table_cli_pattern_and_exclude(capsys):
    from zoo.bench.table import main

    assert main(["--pattern", "se_resnet*,resnet18", "--exclude", "*_resnet1*"]) == 0
    listed = [line.split("`")[1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert listed == ["resnet18", "se_resnet34", "se_resnet50"]
