"""benchmarks.amx_goals: the goal arithmetic and the report, on synthetic figures (the timing itself is
the engines and frozen benchmarks', tested with them)."""
import platform
import sys

import pytest

import erbnn_ext
from erbnn_ext.benchmarks import amx_goals, engines, machine


def _row(layer, count, **times):
    base = {c: None for c in engines.COLUMNS}
    base.update(model="resnet18", layer=layer, batch=16, count=count, chosen="xnor", why="measured", **times)
    return base


def _figures(auto2=1.0, r18=(12.0, 3.0), r20=(4.0, 4.0)):
    rows = [_row("a", 1, xnor=1.0, int8_vnni=2.0, auto=1.05, torch_int8=2.0),
            _row("b", 3, xnor=2.0, int8_vnni=1.0, auto=auto2, torch_int8=2.0)]
    frozen = {("resnet18_1w1a", 16): {"frozen": 1.0, "float32": r18[0], "bfloat16": r18[1]},
              ("resnet20_1w1a", 1): {"frozen": 1.0, "float32": r20[0], "bfloat16": 1.0},
              ("resnet20_1w1a", 16): {"frozen": 1.0, "float32": r20[1], "bfloat16": 1.0}}
    return {"layers": rows, "frozen": frozen}


def test_goals_met_at_their_limits():
    checks = amx_goals.check(_figures())
    values = {text: (value, met) for text, value, _, met in checks}
    # torch int8 (2 + 3*2 = 8 ms) over auto (1.05 + 3*1 = 4.05 ms), counts weighting the layer shapes
    assert values["torch int8 conv / chosen engine, summed over ResNet-18's layers"][0] == pytest.approx(8 / 4.05)
    assert values["auto / fastest engine, worst layer"] == (pytest.approx(1.05), True)
    assert all(met for *_, met in checks), checks


@pytest.mark.parametrize("figures,missed", [
    (_figures(auto2=1.2), "auto / fastest engine, worst layer"),
    (_figures(r18=(11.9, 3.0)), "frozen resnet18_1w1a vs its float32 twin, batch 16"),
    (_figures(r18=(12.0, 2.9)), "frozen resnet18_1w1a vs its bfloat16 twin, batch 16"),
    (_figures(r20=(4.0, 3.9)), "frozen resnet20_1w1a vs its float32 twin, batch 16"),
])
def test_each_goal_can_be_missed(figures, missed):
    failed = [text for text, _, _, met in amx_goals.check(figures) if not met]
    assert failed == [missed]


def test_report_names_the_cpu_and_each_goal():
    m = _figures(auto2=1.2)
    text = amx_goals.report(m, amx_goals.check(m), flags=[])
    assert "the goals are set for an AMX host" in text
    assert "auto / fastest engine, worst layer" in text and text.rstrip().endswith("yes")
    assert sum(line.endswith("NO") for line in text.splitlines()) == 1
    on_amx = amx_goals.report(m, amx_goals.check(m), flags=["amx_int8", "amx_tile"])
    assert "the goals are set for an AMX host" not in on_amx


def test_cpu_flags_are_the_kernels_list():
    flags = machine.cpu_flags()
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        assert "sse2" in flags and flags == sorted(flags)  # every x86-64 CPU has SSE2
    # AMX usable for the engine (CPUID, OS grant, self-test) implies the kernel lists its flags
    assert bool(amx_goals.amx_flags()) or not erbnn_ext.backend_info()["amx"]


def test_auto_over_fastest_takes_the_paired_figure():
    # a separate timing of the same kernel off by the machine's noise: the paired rounds decide
    noisy = _row("a", 1, xnor=1.0, int8_vnni=2.0, auto=1.5)
    assert engines.auto_over_fastest([noisy]) == pytest.approx(1.5)
    noisy["auto_vs_fastest"] = 1.02
    assert engines.auto_over_fastest([noisy]) == pytest.approx(1.02)
    assert engines.fastest_engine(_row("b", 1, xnor=2.0, int8_vnni=1.0, amx=None)) == "int8_vnni"


def test_engine_rows_time_auto_against_the_fastest_side_by_side():
    rows = engines.bench_layers(("resnet20",), (1,), min_time=0.01)
    assert {r["layer"] for r in rows} == {s.name for s in engines.MODELS["resnet20"]}
    available = erbnn_ext.backend_info()["conv_engines"]
    for r in rows:
        assert engines.fastest_engine(r) in available
        assert 0 < r["auto_vs_fastest"] < float("inf")
    assert engines.auto_over_fastest(rows) == max(r["auto_vs_fastest"] for r in rows)
    assert "auto/fast" in engines.format_table(rows)
