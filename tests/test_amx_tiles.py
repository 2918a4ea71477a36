"""The amx engine's tile kernel (csrc/cpu/amx_tiles.h): the emulated tile instructions against their
definition (Intel SDM: signed bytes, int32 sums modulo 2^32, the faulting operand checks), the register
blocks of the kernel against an int64 matmul, and the engine on its edge shapes (output channels, pixel
counts and K off the 32 / 32 / 64 blocking, batch 0 / 1, stride / padding / dilation, the fused tail and
the packed chain) bit for bit against the xnor engine. Where the CPU lacks AMX everything runs on the
emulated tiles; the real-tile cases run where the self-test passed."""
import pytest
import torch

import erbnn_ext
from erbnn_ext import functional as EF, ops

from conftest import NATIVE
from test_binary_conv import conv_truth

C = erbnn_ext._native._C if NATIVE else None


def _op(name):
    return getattr(torch.ops.erbnn, name)


def config_bytes(tiles, palette=1, start_row=0, reserved=0):
    """A 64-byte tile configuration: tiles = {index: (rows, colsb)}."""
    b = [0] * 64
    b[0], b[1], b[2] = palette, start_row, reserved
    for i, (rows, colsb) in tiles.items():
        b[16 + 2 * i], b[17 + 2 * i] = colsb & 0xFF, colsb >> 8
        b[48 + i] = rows
    return b


def dpbssd_truth(c, a, b):
    """TDPBSSD by definition: c[m][n] + sum_k,i a[m][4k+i] * b[k][4n+i] (signed bytes), modulo 2^32."""
    M, K4 = a.shape[0], a.shape[1] // 4
    N = b.shape[1] // 4
    acc = c.long() + torch.einsum("mki,kni->mn", a.long().view(M, K4, 4), b.long().view(K4, N, 4))
    return ((acc + 2**31) % 2**32 - 2**31).int()


def rand_i8(*shape, gen):
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


@pytest.fixture(autouse=True)
def _reset(native):
    yield
    erbnn_ext.set_conv_engine(None)
    C._set_amx_emulated(False)


# ------------------------------------------------------------------------------ the emulated instructions
@pytest.mark.parametrize("M,K4,N", [(16, 16, 16), (1, 1, 1), (5, 3, 7), (16, 1, 16), (3, 16, 2)])
def test_emulated_dpbssd_is_the_definition(M, K4, N):
    gen = torch.Generator().manual_seed(M * 100 + K4 * 10 + N)
    a, b = rand_i8(M, 4 * K4, gen=gen), rand_i8(K4, 4 * N, gen=gen)
    c = torch.randint(-2**31, 2**31, (M, N), generator=gen, dtype=torch.int64).int()
    cfg = config_bytes({0: (M, 4 * N), 1: (M, 4 * K4), 2: (K4, 4 * N)})
    assert torch.equal(_op("_amx_emu_dpbssd")(cfg, c, a, b, 0, 1, 2), dpbssd_truth(c, a, b))


def test_emulated_dpbssd_wraps_int32():
    # -128 * -128 * 64 = 2^20 per output on top of INT32_MAX: the sum wraps as on the hardware.
    a = torch.full((16, 64), -128, dtype=torch.int8)
    b = torch.full((16, 64), -128, dtype=torch.int8)
    c = torch.full((16, 16), 2**31 - 1, dtype=torch.int32)
    cfg = config_bytes({3: (16, 64), 5: (16, 64), 6: (16, 64)})
    out = _op("_amx_emu_dpbssd")(cfg, c, a, b, 3, 5, 6)
    assert torch.equal(out, torch.full((16, 16), -2**31 + 2**20 - 1, dtype=torch.int32))
    assert torch.equal(out, dpbssd_truth(c, a, b))


@pytest.mark.parametrize("cfg,tiles,match", [
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (4, 16)}), (0, 0, 2), "#UD.*differ"),
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (3, 16)}), (0, 1, 2), "#UD.*rows"),    # K: A's 4 dwords, B's 3 rows
    (config_bytes({0: (4, 16), 1: (5, 16), 2: (4, 16)}), (0, 1, 2), "#UD.*rows"),    # M: A and C rows differ
    (config_bytes({0: (4, 12), 1: (4, 16), 2: (4, 16)}), (0, 1, 2), "#UD.*bytes per row"),  # N differs
    (config_bytes({0: (4, 16), 1: (4, 14), 2: (4, 16)}), (0, 1, 2), "#UD.*multiples of 4"),
    (config_bytes({0: (4, 16), 1: (4, 16)}), (0, 1, 2), "#UD.*tile 2 is not configured"),
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (4, 16)}, palette=0), (0, 1, 2), "#UD.*no tile configuration"),
    (config_bytes({0: (17, 16), 1: (4, 16), 2: (4, 16)}), (0, 1, 2), "#GP.*at most 16 x 64"),
    (config_bytes({0: (4, 68), 1: (4, 16), 2: (4, 16)}), (0, 1, 2), "#GP.*at most 16 x 64"),
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (4, 16), 8: (1, 4)}), (0, 1, 2), "#GP.*past palette 1"),
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (4, 16)}, reserved=1), (0, 1, 2), "#GP.*reserved"),
    (config_bytes({0: (4, 16), 1: (4, 16), 2: (4, 16)}, palette=2), (0, 1, 2), "#GP.*palette 2"),
    (config_bytes({0: (4, 0), 1: (4, 16), 2: (4, 16)}), (0, 1, 2), "#GP.*colsb 0"),
])
def test_emulated_faults_where_the_hardware_does(cfg, tiles, match):
    z = torch.zeros(16, 64, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=match):
        _op("_amx_emu_dpbssd")(cfg, z, z, z, *tiles)


def test_emulated_load_store_follow_the_configuration():
    # A 3-row x 8-byte C tile loaded from a wider matrix: only its rows x colsb bytes take part and come back.
    gen = torch.Generator().manual_seed(3)
    c, a, b = rand_i8(3, 16, gen=gen).view(torch.int32), rand_i8(3, 8, gen=gen), rand_i8(2, 16, gen=gen)
    cfg = config_bytes({0: (3, 8), 1: (3, 8), 2: (2, 8)})
    out = _op("_amx_emu_dpbssd")(cfg, c, a, b, 0, 1, 2)
    assert out.shape == (3, 2)
    assert torch.equal(out, dpbssd_truth(c[:, :2], a, b[:, :8]))


# ------------------------------------------------------------------------------ the register blocks
def block_truth(A, B):
    """C[i][j] = sum over kt of A[i, kt] (16 x 64) times B[j, kt] (16 rows of 4 k x 16 pixels), mod 2^32."""
    MB, Kt, NB = A.shape[0], A.shape[1], B.shape[0]
    a = A.long().view(MB, Kt, 16, 16, 4)                         # [i, kt, m, k4, byte]
    b = B.long().view(NB, Kt, 16, 16, 4)                         # [j, kt, k4, n, byte]
    acc = torch.einsum("itmkb,jtknb->ijmn", a, b)
    return ((acc + 2**31) % 2**32 - 2**31).int()


def _usable_tiles():
    kinds = ["emulated"]
    if NATIVE and C.amx_available():
        kinds.append("real")
    return kinds


@pytest.mark.parametrize("kind", ["emulated", "real"])
@pytest.mark.parametrize("MB,NB", [(2, 2), (2, 1), (1, 2), (1, 1)])
@pytest.mark.parametrize("Kt", [1, 3])
def test_register_block(kind, MB, NB, Kt):
    if kind not in _usable_tiles():
        pytest.skip(f"no usable AMX tiles on this CPU: {C.amx_status()}")
    gen = torch.Generator().manual_seed(MB * 10 + NB + Kt)
    A, B = rand_i8(MB, Kt, 16, 64, gen=gen), rand_i8(NB, Kt, 16, 64, gen=gen)
    assert torch.equal(_op("_amx_tile_gemm")(A, B, kind == "emulated"), block_truth(A, B))


def test_register_block_sums_wrap():
    # 2560 K steps of 64 products of 2^14: 2^31 + 2^29, past INT32_MAX: the tiles' sums wrap
    A = torch.full((1, 2560, 16, 64), -128, dtype=torch.int8)
    B = torch.full((1, 2560, 16, 64), -128, dtype=torch.int8)
    out = _op("_amx_tile_gemm")(A, B, True)
    assert torch.equal(out, torch.full_like(out, -2**31 + 2**29))


def test_real_block_refused_without_amx():
    if C.amx_available():
        pytest.skip("AMX is usable here")
    z = torch.zeros(1, 1, 16, 64, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="AMX is not usable here"):
        _op("_amx_tile_gemm")(z, z, False)


# ------------------------------------------------------------------------------ the engine on its edges
def _amx_engine(kind):
    if kind == "emulated":
        if erbnn_ext.backend_info()["cpu_isa"] != "avx512_vpopcntdq":
            pytest.skip("the int8 engines need the avx512 CPU path")
        C._set_amx_emulated(True)
    elif not C.amx_available():
        pytest.skip(f"no usable AMX tiles on this CPU: {C.amx_status()}")
    if "amx" not in erbnn_ext.backend_info()["conv_engines"]:
        pytest.skip(f"the amx engine is off: {C.amx_status()}")  # ERBNN_DISABLE_AMX=1


# (n, c, o, h, w, k, stride, padding, dilation): O around 16 / 32 / 64, pixel counts giving odd tile
# counts and partial tiles, K = k*k*ceil(c/4)*4 below, at and past multiples of 64.
EDGES = [
    (2, 64, 64, 8, 8, 3, 1, 1, 1),      # 64 pixels: 4 tiles, 2 full pairs; K = 576 = 9 * 64
    (1, 64, 17, 5, 7, 3, 1, 1, 1),      # 35 pixels: 3 tiles, the last pair single; O = 16 + 1
    (3, 16, 33, 6, 6, 3, 1, 1, 1),      # K = 144 (pad to 192); O = 32 + 1
    (1, 3, 16, 9, 9, 3, 2, 1, 1),       # K = 36; stride 2
    (2, 70, 48, 7, 5, 3, 1, 2, 2),      # channel pad (70 -> 72), dilation 2, padding 2; O = 48 (2x2 + 1x2)
    (1, 128, 31, 4, 4, 1, 1, 0, 1),     # 1x1, K = 128; 16 pixels: one tile; O = 31
    (2, 33, 65, 11, 3, 5, 1, 2, 1),     # 5x5, K = 25 * 36 = 900; O = 64 + 1
    (1, 256, 96, 2, 2, 3, 1, 1, 1),     # K = 2304, 4 pixels
    (3, 8, 20, 9, 9, 3, 1, 1, 1),       # 18 tiles: task groups of 8 tiles (4 pairs), the last of 2
    (1, 64, 40, 13, 5, 3, 1, 1, 1),     # 5 tiles: one group of 2 pairs and a single tile
    (1, 512, 20, 10, 10, 3, 1, 1, 1),   # K = 4608: groups of 3 pairs (their im2col within 512 KiB), 7 tiles
    (0, 8, 20, 5, 5, 3, 1, 1, 1),       # empty batch
]


@pytest.mark.parametrize("kind", ["emulated", "real"])
@pytest.mark.parametrize("cfg", EDGES, ids=lambda c: "n{}c{}o{}h{}w{}k{}s{}p{}d{}".format(*c))
def test_engine_edges_exact(kind, cfg):
    _amx_engine(kind)
    n, c, o, h, w, k, s, p, d = cfg
    gen = torch.Generator().manual_seed(sum(cfg))
    x, wt = torch.randn(n, c, h, w, generator=gen), torch.randn(o, c, k, k, generator=gen)
    erbnn_ext.set_conv_engine("amx")
    y = EF.binary_conv2d(x, wt, s, p, d)
    assert torch.equal(y, conv_truth(x, wt, s, p, d))


@pytest.mark.parametrize("kind", ["emulated", "real"])
@pytest.mark.parametrize("cfg", EDGES[:-1], ids=lambda c: "n{}c{}o{}h{}w{}k{}s{}p{}d{}".format(*c))
def test_engine_fused_tail_and_chain_identical_to_xnor(kind, cfg):
    # The epilogue with a residual and RPReLU, the float output and the packed output for the next layer,
    # from a float input and from packed input signs: every byte equal to the xnor engine's.
    _amx_engine(kind)
    n, c, o, h, w, k, s, p, d = cfg
    gen = torch.Generator().manual_seed(1000 + sum(cfg))
    x, wt = torch.randn(n, c, h, w, generator=gen) + 0.2, torch.randn(o, c, k, k, generator=gen)
    wp = ops.pack_conv_weight(wt)
    geo = ([s, s], [p, p], [d, d])
    r = lambda f: f(o, generator=gen)
    kw = dict(out_scale=r(torch.rand) + 0.5, out_bias=r(torch.randn), ones_scale=r(torch.randn),
              act=torch.stack([r(torch.randn), r(torch.rand), r(torch.randn)]))
    residual = torch.randn(ops.binary_conv2d_packed(x, wp, *geo).shape, generator=gen)
    runs = lambda: [
        ops.binary_conv2d_packed(x, wp, *geo, x_shift=0.2, residual=residual, **kw),
        *ops.binary_conv2d_bits(x, wp, *geo, x_shift=torch.tensor([0.2]), residual=residual,
                                next_shift=torch.tensor([0.1]), **kw),
        ops.binary_conv2d_bits(x, wp, *geo, x_shift=torch.tensor([0.2]), next_shift=torch.tensor([-0.3]),
                               float_out=False, **kw)[1],
    ]
    erbnn_ext.set_conv_engine("amx")
    got = runs()
    erbnn_ext.set_conv_engine("xnor")
    want = runs()
    for g, wv in zip(got, want):
        assert torch.equal(g, wv)
    # packed input signs (the previous layer's out_bits): a conv over the same channels
    wp2 = ops.pack_conv_weight(torch.randn(o, o, 3, 3, generator=gen))
    erbnn_ext.set_conv_engine("amx")
    got2 = ops.binary_conv2d_bits(got[2], wp2, 1, 1, 1, in_channels=o)[0]
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(got2, ops.binary_conv2d_bits(want[2], wp2, 1, 1, 1, in_channels=o)[0])


def test_engine_threads_and_channel_split():
    # One image and few tiles: the output channels are split across tasks (chunks of 32, or 64 with the
    # packed output); the chunking changes nothing.
    _amx_engine("emulated")
    x, wt = torch.randn(1, 64, 4, 4), torch.randn(160, 64, 3, 3)
    wp = ops.pack_conv_weight(wt)
    prev = torch.get_num_threads()
    outs = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        try:
            erbnn_ext.set_conv_engine("amx")
            outs.append((ops.binary_conv2d_packed(x, wp, 1, 1),
                         *ops.binary_conv2d_bits(x, wp, 1, 1, 1, next_shift=torch.tensor([3.0]))))
        finally:
            torch.set_num_threads(prev)
    for run in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, outs[0]))
    assert torch.equal(outs[0][0], conv_truth(x, wt, 1, 1, 1)) and torch.equal(outs[0][1], outs[0][0])
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(outs[0][2], ops.binary_conv2d_bits(x, wp, 1, 1, 1, next_shift=torch.tensor([3.0]))[1])


def test_weights_packed_once_per_content():
    # The tile layout of a weight is built on its first amx call and then served from the packed-weights
    # cache: later calls (any batch) do not pack again; new weight content does.
    _amx_engine("emulated")
    erbnn_ext.set_conv_engine("amx")
    C._clear_conv_engine_cache()
    packs = _op("_amx_weight_packs")
    x, wt = torch.randn(2, 40, 6, 6), torch.randn(24, 40, 3, 3)
    wp = ops.pack_conv_weight(wt)
    before = packs()
    y = ops.binary_conv2d_packed(x, wp, 1, 1)
    assert packs() == before + 1
    for xb in (x, x[:1], torch.randn(5, 40, 6, 6)):
        ops.binary_conv2d_packed(xb, wp, 1, 1)
    assert packs() == before + 1
    assert torch.equal(y, conv_truth(x, wt, 1, 1, 1))
    wp.data.copy_(ops.pack_conv_weight(-wt))
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1), conv_truth(x, -wt, 1, 1, 1))
    assert packs() == before + 2
    erbnn_ext.set_conv_engine("xnor")
    ops.binary_conv2d_packed(x, ops.pack_conv_weight(wt * 2 + 1), 1, 1)
    assert packs() == before + 2  # other engines build no tile layout


def test_tile_config_is_the_kernel_palette():
    # The configuration the kernel hands to LDTILECFG, as compiled: palette 1, the 8 tiles of the 2x2
    # register block (C 0-3, A 4-5, B 6-7) each 16 rows x 64 bytes, everything else zero.
    b = bytes(C._amx_tile_config())
    assert b == bytes(config_bytes({i: (16, 64) for i in range(8)}))
    if C.amx_available():
        assert C._amx_tile_config_loaded() == C._amx_tile_config()
