"""erbnn_ext.summary and `erbnn summary`: numbers against a hand count."""
import json

import pytest
import torch

import erbnn_ext
from erbnn_ext import models, nn as enn
from erbnn_ext.cli import main
from erbnn_ext.summary import ModelSummary, summary


def _small():
    """input 3x8x8 -> FP conv 3->8 (3x3, pad 1) -> BN -> RPReLU -> binary conv 8->16 (3x3, stride 2, pad 1)
    -> flatten -> FP Linear(16*4*4, 10) with bias."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                               enn.RPReLU(8), enn.ERBinaryConv2d(8, 16, 3, stride=2, padding=1),
                               torch.nn.Flatten(), torch.nn.Linear(256, 10))


def test_hand_count_small_model():
    s = summary(_small(), (3, 8, 8))
    rows = {r.name: r for r in s.rows}
    assert list(rows) == ["0", "1", "2", "3", "5"]  # Flatten has nothing to count; RPReLU is one row
    assert [r.kind for r in s.rows] == ["float", "float", "float", "binary", "float"]
    # FP conv: 8*3*3*3 = 216 weights; 8 x 8x8 outputs, each 3*3*3 = 27 MACs -> 13,824
    assert (rows["0"].float_params, rows["0"].float_macs, rows["0"].binary_macs) == (216, 13824, 0)
    assert rows["0"].output_shape == (8, 8, 8)
    assert (rows["1"].float_params, rows["1"].float_macs) == (16, 0)      # BN gamma, beta
    assert rows["2"].float_params == 8 * 3                              # RPReLU b1, b2 and PReLU slope
    # binary conv: 16*8*9 = 1,152 binary weights; 16 x 4x4 outputs, each 8*9 = 72 MACs -> 18,432
    b = rows["3"]
    assert (b.binary_params, b.float_params, b.binary_macs, b.float_macs) == (1152, 0, 18432, 0)
    assert b.output_shape == (16, 4, 4) and b.memory_float32 == 4608 and b.memory_packed == 144
    assert (rows["5"].float_params, rows["5"].float_macs) == (2570, 2560)  # 256*10 + 10 bias; 256*10 MACs
    t = s.totals
    assert (t["binary_params"], t["float_params"]) == (1152, 216 + 16 + 24 + 2570)
    assert (t["binary_macs"], t["float_macs"], t["macs"]) == (18432, 13824 + 2560, 34816)
    assert t["memory_float32"] == 4 * (1152 + 2826)
    assert t["memory_packed"] == 1152 / 8 + 4 * 2826
    assert t["compression"] == pytest.approx(4 * 3978 / (144 + 11304))
    assert t["binary_mac_share"] == pytest.approx(18432 / 34816)
    assert t["ops"] == pytest.approx(16384 + 18432 / 64)
    table = str(s)
    assert "ERBinaryConv2d" in table and "18,432" in table and "compression" in table


def test_binary_linear_bias_is_float_and_every_parameter_counted_once():
    m = torch.nn.Sequential(enn.ERBinaryLinear(20, 6, bias=True))
    s = summary(m, (20,))
    assert (s.rows[0].binary_params, s.rows[0].float_params, s.rows[0].binary_macs) == (120, 6, 120)
    for name in models.MODELS:
        model = models.build_model(name)
        assert summary(model).totals["params"] == sum(p.numel() for p in model.parameters())


def test_paper_models_defaults():
    s = erbnn_ext.summary(models.resnet18_1w1a_imagenet())  # the function at the package's top level
    assert isinstance(s, ModelSummary) and s.input_size == (3, 224, 224)
    t = s.totals
    assert sum(r.kind == "binary" for r in s.rows) == 16
    assert t["binary_params"] == 9 * (64 * 64 * 4 + 64 * 128 + 128 * 128 * 3 + 128 * 256 + 256 * 256 * 3
                                      + 256 * 512 + 512 * 512 * 3)
    # stem: 64 x 112x112 outputs x 147 MACs; body: 13 convs of 115.6 M MACs and 3 strided ones of half that
    assert t["binary_macs"] == 13 * 115_605_504 + 3 * 57_802_752
    assert t["float_macs"] == 64 * 112 * 112 * 147 + 3 * 6_422_528 + 512 * 1000
    assert t["ops"] == pytest.approx(1.64e8, rel=0.01)  # Bi-Real Net's count for ResNet-18: 1.63e8
    assert summary(models.resnet20_1w1a()).input_size == (3, 32, 32)
    with pytest.raises(ValueError, match="give input_size"):
        summary(_small())
    with pytest.raises(RuntimeError, match="check input_size"):
        summary(_small(), (3, 9, 9))  # the Linear expects 16*4*4 features: 9x9 gives 16*5*5


def test_summary_leaves_the_model_untouched():
    m = models.resnet20_1w1a()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    summary(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training and next(m.parameters()).device.type == "cpu"


def test_cli_summary(capsys):
    assert main(["summary", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "ResNet20" not in out.splitlines()[0] and out.startswith("resnet20_1w1a")
    assert "compression" in out
    assert main(["summary", "resnet18_imagenet", "--json", "--num-classes", "10", "--input-size", "3,64,64"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "resnet18_1w1a_imagenet" and d["input_size"] == [3, 64, 64]
    assert d["layers"][-1]["float_params"] == 5130 and d["totals"]["binary_params"] > 1e7
    assert main(["summary", "resnet50"]) == 2
    assert "model must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "resnet20", "--input-size", "3,32"])


@pytest.mark.parametrize("bench_name", ["resnet20", "resnet18", "vgg_small", "resnet18_imagenet"])
def test_bench_shapes_cover_the_models_binary_layers(bench_name):
    """benchmarks/shapes.py lists every binary conv of each model (erbnn bench --models NAME)."""
    from erbnn_ext.benchmarks.cli import _models
    from erbnn_ext.benchmarks.shapes import MODELS as SHAPES
    assert _models(bench_name) == [bench_name]
    s = summary(models.build_model(bench_name))
    rows = [r for r in s.rows if r.kind == "binary"]
    assert sum(sh.count for sh in SHAPES[bench_name]) == len(rows)
    assert sum(sh.macs() * sh.count for sh in SHAPES[bench_name]) == s.totals["binary_macs"]
