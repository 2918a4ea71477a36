"""erbnn_ext.export: torch.export of a frozen model (dynamic batch, save/load), and the ONNX refusal."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from erbnn_ext import deploy, export, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained(model, shape):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, *shape)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    return model.eval()


def test_export_frozen_dynamic_batch_save_load(native, tmp_path):
    model = _trained(models.resnet20_1w1a(), (3, 32, 32))
    frozen = deploy.freeze(model)
    ep = export.export(model, torch.randn(2, 3, 32, 32))  # freezes the trained model itself
    # every binary conv is chained (deploy.freeze: packed signs between layers, in or out)
    assert export.custom_ops(ep) == ["erbnn.binary_conv2d_bits.default"]
    with torch.no_grad():
        for n in (1, 2, 7):  # any batch size
            x = torch.randn(n, 3, 32, 32)
            assert torch.equal(ep.module()(x), frozen(x))
    path = tmp_path / "resnet20.pt2"
    export.save(ep, path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(export.load(path).module()(x), ep.module()(x))
    # an already frozen model exports as it is
    assert export.custom_ops(export.export(frozen, torch.randn(2, 3, 32, 32), dynamic_batch=False))


def test_exported_program_needs_erbnn_imported(native, tmp_path):
    path = tmp_path / "m.pt2"
    export.save(export.export(_trained(models.resnet20_1w1a(), (3, 32, 32)), torch.randn(2, 3, 32, 32)), path)
    code = ("import sys, torch\n"
            "try:\n    torch.export.load(sys.argv[1])\nexcept Exception as e:\n    print('REFUSED', type(e).__name__)\n"
            "import erbnn_ext\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "print('SHAPE', tuple(ep.module()(torch.randn(4, 3, 32, 32)).shape))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REFUSED" in r.stdout and "SHAPE (4, 10)" in r.stdout


def test_export_imagenet_resnet18(native):
    model = _trained(models.resnet18_1w1a_imagenet(num_classes=10), (3, 64, 64))
    ep = export.export(model, torch.randn(2, 3, 64, 64))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), deploy.freeze(model)(x))
    n_ops = sum(1 for nd in ep.graph.nodes if nd.op == "call_function" and "erbnn" in str(nd.target))
    assert n_ops == 16


def test_export_refusals():
    with pytest.raises(ValueError, match="ablation binary layers"):
        export.export(models.resnet20_1w1a(method="irnet"), torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        export.export(models.resnet20_1w1a(), [1, 2])
    with pytest.raises(NotImplementedError, match="ONNX export of a frozen ER-BNN model is not supported.*torch.export"):
        export.export_onnx(models.resnet20_1w1a(), torch.randn(1, 3, 32, 32), "m.onnx")
