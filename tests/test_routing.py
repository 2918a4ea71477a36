"""The one route decision of an ER layer (erbnn_ext.nn.routing): which kernel and layout a forward takes,
the per-layer settings and train_route's overrides, and that forward follows the route it reports."""
import copy
import json

import pytest
import torch

import erbnn_ext
from erbnn_ext import cli, models, nn as enn, ops

pytestmark = pytest.mark.skipif(not ops.has_kernel("restore_activation_train", "cpu"),
                                reason="needs the compiled CPU kernels")


def _conv(cin=16, **kw):
    return enn.ERBinaryConv2d(cin, 8, 3, padding=1, **kw).train()


def _x(cin=16, **kw):
    return torch.randn(2, cin, 6, 6, **kw)


def test_training_step_routes():
    r = enn.route(_conv(), _x())
    assert (r.kernel, r.layout) == ("er_step", "nhwc") and r.reason
    assert enn.route(_conv(256), _x(256)).layout == "nchw"  # above NHWC_MAX_CHANNELS
    assert enn.route(_conv(256), _x(256).contiguous(memory_format=torch.channels_last)).layout == "nhwc"
    assert enn.route(_conv(256, nhwc_train=True), _x(256)).layout == "nhwc"
    assert enn.route(_conv(nhwc_train=False), _x()).layout == "nchw"
    assert enn.route(_conv(fused_train=False), _x()).kernel == "restored_popcount"
    assert enn.route(_conv(xnor_train=False), _x()).kernel == "float"
    assert enn.route(_conv().double(), _x(dtype=torch.float64)).kernel == "float"
    assert enn.route(_conv(), _x()[:0]).kernel == "float"  # an empty batch: no step
    with erbnn_ext.use_backend("reference"):
        assert enn.route(_conv(), _x()).kernel == "float"
    with torch.no_grad():
        assert enn.route(_conv(), _x()).kernel == "float"


def test_eval_routes():
    layer = _conv().eval()
    assert enn.route(layer, _x()).kernel == "float"  # grad enabled
    with torch.no_grad():
        assert enn.route(layer, _x()).kernel == "xnor_eval"
        assert enn.route(layer.double(), _x(dtype=torch.float64)).kernel == "float"
        lin = enn.ERBinaryLinear(16, 4).eval()
        assert enn.route(lin, torch.randn(3, 16)).kernel == "xnor_eval"
    assert enn.route(enn.ERBinaryLinear(16, 4), torch.randn(3, 16)).kernel == "float"


def test_train_route_overrides_every_layer_and_restores():
    layer = _conv(256)
    with enn.train_route(xnor=False):
        assert enn.route(layer, _x(256)).kernel == "float"
    with enn.train_route(nhwc=True):
        assert enn.route(layer, _x(256)).layout == "nhwc"
        with enn.train_route(fused=False):
            assert enn.route(layer, _x(256)).kernel == "restored_popcount"
        assert enn.route(layer, _x(256)).kernel == "er_step"
    with pytest.raises(RuntimeError), enn.train_route(nhwc=False):
        raise RuntimeError("restored on the way out")
    assert enn.route(layer, _x(256)) == enn.route(_conv(256), _x(256))
    assert enn.route(_conv(), _x()).layout == "nhwc"


@pytest.mark.parametrize("settings, node", [({}, "ERConv2dStepBackward"),
                                            ({"fused_train": False}, "RestoredConv2dBackward"),
                                            ({"xnor_train": False}, "ConvolutionBackward0")])
def test_forward_follows_its_route(settings, node):
    out = _conv(**settings)(_x(requires_grad=True))
    assert out.grad_fn.name() == node


def test_settings_are_not_state():
    layer = _conv(xnor_train=False, nhwc_train=True, fused_train=False)
    assert set(layer.state_dict()) == set(_conv().state_dict())
    twin = copy.deepcopy(layer)
    assert (twin.xnor_train, twin.nhwc_train, twin.fused_train) == (False, True, False)


def test_routes_of_a_model_leave_it_unchanged():
    model = models.resnet20_1w1a()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = enn.routes(model, torch.randn(2, 3, 32, 32))
    n_er = sum(isinstance(m, enn.ERBinaryConv2d) for m in model.modules())
    assert len(found) == n_er and all(r.kernel == "er_step" for _, r in found)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    with torch.no_grad():
        assert {r.kernel for _, r in enn.routes(model, torch.randn(2, 3, 32, 32), train=False)} == {"xnor_eval"}


def test_info_prints_routes(capsys):
    assert cli.main(["info", "--model", "resnet20", "--json"]) == 0
    routes = json.loads(capsys.readouterr().out)["routes"]
    assert len(routes) == 18 and routes[0]["layer"] == "layer1.0.conv1" and routes[0]["kernel"] == "er_step"
    assert cli.main(["info", "--model", "resnet20", "--eval"]) == 0
    assert "xnor_eval" in capsys.readouterr().out


@pytest.mark.parametrize("mode", [[], ["--eval"]])
def test_info_names_each_layers_conv_engine_and_why(capsys, mode):
    """Every popcount-conv layer gets the engine its shape runs on, with the auto measurement (or the
    forced engine), in the JSON and the table."""
    erbnn_ext._native._clear_conv_engine_cache()
    assert cli.main(["info", "--model", "resnet20", "--json", *mode]) == 0
    routes = json.loads(capsys.readouterr().out)["routes"]
    engines = erbnn_ext._native.conv_engines()
    assert len(routes) == 18 and all(r["engine"] in engines for r in routes), routes
    assert all(r["engine_why"] for r in routes)
    assert cli.main(["info", "--model", "resnet20", *mode]) == 0
    out = capsys.readouterr().out
    assert "CPU binary-conv engine per layer" in out and f"layer3.2.conv2  {routes[-1]['engine']}" in out


def test_info_names_a_forced_engine(capsys, monkeypatch):
    monkeypatch.setenv("ERBNN_CONV_ENGINE", "xnor")
    assert cli.main(["info", "--model", "resnet20", "--json", "--eval"]) == 0
    routes = json.loads(capsys.readouterr().out)["routes"]
    assert {(r["engine"], r["engine_why"].split()[0]) for r in routes} == {("xnor", "forced")}
