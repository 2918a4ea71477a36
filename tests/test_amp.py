"""Mixed precision: an ER-BNN model under torch.autocast (bfloat16 on the CPU) trains like float32."""
import copy

import pytest
import torch
import torch.nn.functional as F

import erbnn_ext
from erbnn_ext import nn as enn
from erbnn_ext.nn import set_epoch


def _small():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), enn.RPReLU(16),
        enn.ERBinaryConv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), enn.RPReLU(32),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def _step(model, x, y, amp):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
        loss = F.cross_entropy(out, y)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    opt.step()
    return loss.item(), out.dtype, grads


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_bf16_step_close_to_float32(backend):
    if backend == "native" and not erbnn_ext.native_available():
        pytest.fail("native extension missing")
    torch.manual_seed(0)
    model = _small()
    set_epoch(model, 0, 10)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    with erbnn_ext.use_backend(backend):
        m32, m16 = copy.deepcopy(model), copy.deepcopy(model)
        loss32, dt32, g32 = _step(m32, x, y, amp=False)
        loss16, dt16, g16 = _step(m16, x, y, amp=True)
    assert dt32 == torch.float32 and dt16 == torch.bfloat16  # autocast really ran the layers in bf16
    assert loss16 == pytest.approx(loss32, rel=0.02)
    flat32, flat16 = (torch.cat([g[n].flatten() for n in g32]) for g in (g32, g16))
    assert F.cosine_similarity(flat16, flat32, 0).item() > 0.99
    # per parameter: bf16 rounding flips a few signs in the binary conv's input, and a flipped sign is a
    # full-size change, so the gradients upstream of it move by ~10% (a 1e-3 input noise in float32
    # alone moves them by 6-8%); downstream of it they agree to ~1%
    for n in g32:
        assert (g16[n] - g32[n]).norm() <= 0.25 * g32[n].norm(), n
    assert m16[3].weight.dtype == torch.float32 and torch.isfinite(m16[3].weight).all()
    # the activation statistics recorded under autocast are float32-exact values of the same batch
    torch.testing.assert_close(m16[3].running_stats()[0], m32[3].running_stats()[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_er_layer_takes_bf16_inputs_under_autocast(backend):
    if backend == "native" and not erbnn_ext.native_available():
        pytest.fail("native extension missing")
    torch.manual_seed(1)
    layer = enn.ERBinaryConv2d(16, 32, 3, padding=1)
    x = torch.randn(8, 16, 12, 12).bfloat16().float()
    with erbnn_ext.use_backend(backend):
        ref = layer(x.clone().requires_grad_())
        xb = x.bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(xb)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16
    assert torch.isfinite(xb.grad.float()).all() and layer.weight.grad.dtype == torch.float32
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


def test_fit_with_bf16_autocast_and_channels_last(tmp_path):
    from erbnn_ext.training import fit
    from erbnn_ext.training.errors import UsageError
    torch.manual_seed(0)
    model = _small()
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    res = fit(model, batches, batches[:1], epochs=2, warmup=0, amp="bf16", channels_last=True, out=tmp_path,
              log=None)
    assert [r["train_samples"] for r in res["history"]] == [24, 24] and res["history"][1]["test_samples"] == 8
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res["history"])
    assert model[0].weight.dtype == torch.float32 and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["scaler"] is None  # bf16 needs no scaler
    with pytest.raises(UsageError, match="needs a CUDA device"):
        fit(_small(), batches, epochs=1, amp="fp16", log=None)
    with pytest.raises(UsageError, match="amp must be"):
        fit(_small(), batches, epochs=1, amp="int8", log=None)
