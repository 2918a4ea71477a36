"""The int8 engines' input preparation (csrc/cpu/int8_conv.cpp): the sign bytes from the packed signs of
a chained layer (a nibble table per 4 channels, 16 pixels at a time, channels past C as pad bytes) and
the im2col by masked loads along output rows at stride 1 (1 to 3 rows per 16-pixel tile) or gathers,
each bit for bit against the xnor engine, which reads the packed signs directly."""
import pytest
import torch

import erbnn_ext
from erbnn_ext import ops

from conftest import NATIVE
from test_binary_conv import conv_truth

C = erbnn_ext._native._C if NATIVE else None


@pytest.fixture(params=["int8_vnni", "amx_emulated"])
def int8_engine(request, native):
    name = request.param
    if erbnn_ext.backend_info()["cpu_isa"] != "avx512_vpopcntdq":
        pytest.skip("the int8 engines need the avx512 CPU path")
    if name == "amx_emulated":
        C._set_amx_emulated(True)
        name = "amx"
    if name not in erbnn_ext.backend_info()["conv_engines"]:
        pytest.skip(f"engine {name} not available here")
    yield name
    erbnn_ext.set_conv_engine(None)
    C._set_amx_emulated(False)


@pytest.mark.parametrize("c", [1, 3, 4, 5, 63, 64, 65, 100, 128, 130, 256])
@pytest.mark.parametrize("w", [1, 7, 16, 17, 40])
def test_packed_input_identical_to_xnor(int8_engine, c, w):
    gen = torch.Generator().manual_seed(c * 100 + w)
    x = torch.randn(2, c, 3, w, generator=gen)
    bits = ops.pack_signs(x, 1)  # [N, H, W, Cw] int64, the layout a chained layer reads
    wt = torch.randn(9, c, 3, 3, generator=gen)
    wp = ops.pack_conv_weight(wt)
    erbnn_ext.set_conv_engine(int8_engine)
    y = ops.binary_conv2d_bits(bits, wp, 1, 1, 1, in_channels=c)[0]
    assert torch.equal(y, conv_truth(x, wt, 1, 1, 1))
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(y, ops.binary_conv2d_bits(bits, wp, 1, 1, 1, in_channels=c)[0])


# output widths giving 1, 2, 3 and more rows per 16-pixel tile; dilation and padding move the runs
@pytest.mark.parametrize("ow,k,p,d", [(32, 3, 1, 1), (16, 3, 1, 2), (8, 3, 1, 1), (7, 3, 2, 2), (6, 1, 0, 1),
                                      (5, 3, 1, 1), (20, 5, 2, 1)])
def test_im2col_runs_identical_to_xnor(int8_engine, ow, k, p, d):
    gen = torch.Generator().manual_seed(ow + k + p + d)
    w_in = ow - 2 * p + d * (k - 1)
    x, wt = torch.randn(2, 36, 6, w_in, generator=gen), torch.randn(20, 36, k, k, generator=gen)
    erbnn_ext.set_conv_engine(int8_engine)
    y = ops.binary_conv2d_packed(x, ops.pack_conv_weight(wt), 1, p, d)
    assert y.shape[-1] == ow
    assert torch.equal(y, conv_truth(x, wt, 1, p, d))
