"""CPU binary-conv engines (issue 7): xnor (XNOR-popcount), int8_vnni (+-1 int8 GEMM, AVX512-VNNI),
amx (int8 GEMM on AMX tiles), onednn_int8 (torch's oneDNN int8 conv on the +-1 operands). Every
available engine, forced, must be exact on the conv grid and give bit-identical fused-epilogue outputs;
plus the auto choice, the overrides and the unavailable-engine error. An engine this machine lacks is
skipped with the reason (AMX: amx_available() is False; onednn_int8: onednn_status())."""
import os
import random

import pytest
import torch

import erbnn_ext
from erbnn_ext import functional as EF, ops

from conftest import NATIVE
from test_binary_conv import conv_truth, fused_truth

ENGINES = ["xnor", "int8_vnni", "amx", "onednn_int8"]
# "amx_emulated": the amx engine (its layout, K padding to 64, tile kernel, driver and epilogue) on emulated
# tile instructions (tests/test_amx_tiles.py): runs everywhere; the real "amx" needs the hardware.
C = erbnn_ext._native._C if NATIVE else None
# ERBNN_DISABLE_AMX as the suite was started with: tests that switch AMX off give back this state.
AMX_DISABLED_AT_START = os.environ.get("ERBNN_DISABLE_AMX", "") not in ("", "0")


def _available():
    return erbnn_ext.backend_info()["conv_engines"] if NATIVE else []


def _amx_usable():
    """The real tiles are available to the amx engine (present, granted, self-tested, not disabled)."""
    return C.amx_status().startswith("usable") and erbnn_ext.backend_info()["cpu_isa"] == "avx512_vpopcntdq"


@pytest.fixture(autouse=True)
def _reset_engine(monkeypatch):
    monkeypatch.delenv("ERBNN_CONV_ENGINE", raising=False)
    yield
    if NATIVE:
        erbnn_ext.set_conv_engine(None)
        C._set_amx_disabled(AMX_DISABLED_AT_START)
        C._set_amx_emulated(False)
        C._set_onednn_disabled(False)


def _onednn_usable():
    return C.onednn_status().startswith("usable")


@pytest.fixture(params=ENGINES + ["amx_emulated"])
def engine(request, native):
    name = request.param
    if name == "amx_emulated":
        if erbnn_ext.backend_info()["amx"]:
            pytest.skip("real AMX present: the amx case runs the tile instructions themselves")
        C._set_amx_emulated(True)
        if "amx" not in _available():  # the ISA cap (ERBNN_CPU_ISA / set_cpu_isa below avx512) disables it
            pytest.skip(f"engine amx (emulated) not available on the {erbnn_ext.backend_info()['cpu_isa']} path")
        erbnn_ext.set_conv_engine("amx")
        yield name
        return
    if name not in _available():
        why = {"amx": "amx_available() is False (no AMX-INT8 on this CPU or the OS refused the tile state)",
               "onednn_int8": f"onednn_status: {C.onednn_status()}"}.get(name, "this CPU has no AVX512-VNNI")
        pytest.skip(f"engine {name} not available: {why}")
    erbnn_ext.set_conv_engine(name)
    yield name


def sample_grid(n, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c, k = rng.choice([1, 3, 31, 33, 63, 65, 127, 129]), rng.choice([1, 3, 5])
        s, p, d = rng.choice([1, 2]), rng.choice([0, 1, 2]), rng.choice([1, 2])
        h, w = rng.randint(1, 11), rng.randint(1, 11)
        if h + 2 * p < d * (k - 1) + 1 or w + 2 * p < d * (k - 1) + 1:
            continue
        out.append(dict(n=rng.choice([1, 2, 3]), c=c, o=rng.choice([1, 5, 16, 17, 40]), k=k, s=s, p=p, d=d,
                        h=h, w=w))
    return out


GRID = sample_grid(36, seed=7) + [dict(n=2, c=c, o=9, k=3, s=1, p=1, d=1, h=5, w=6)
                                  for c in [1, 3, 31, 33, 63, 65, 127, 129]]
IDS = "n{n}c{c}o{o}k{k}s{s}p{p}d{d}h{h}w{w}".format


@pytest.mark.parametrize("cfg", GRID, ids=lambda c: IDS(**c))
def test_grid_exact(engine, cfg):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    assert torch.equal(EF.binary_conv2d(x, w, *args), conv_truth(x, w, *args))


@pytest.mark.parametrize("shape", [(1, 64, 1, 1), (2, 65, 3, 3), (3, 128, 5, 4), (1, 3, 2, 2)])
def test_one_by_one_outputs(engine, shape):
    x, w = torch.randn(shape), torch.randn(16, shape[1], shape[2], shape[3])
    y = EF.binary_conv2d(x, w, 1, 0)  # the kernel covers the whole input: a 1x1 output
    assert y.shape[2:] == (1, 1)
    assert torch.equal(y, conv_truth(x, w, 1, 0, 1))
    w3 = torch.randn(20, shape[1], 3, 3)
    assert torch.equal(EF.binary_conv2d(x, w3, 2, 1), conv_truth(x, w3, 2, 1, 1))


def test_resnet_shapes_many_tiles(engine):
    for c, o, hw, s in [(64, 64, 17, 1), (128, 72, 16, 2), (256, 20, 8, 1)]:
        x, w = torch.randn(2, c, hw, hw), torch.randn(o, c, 3, 3)
        assert torch.equal(EF.binary_conv2d(x, w, s, 1), conv_truth(x, w, s, 1, 1))


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_layouts_and_dtypes(engine, layout, dtype):
    x, w = torch.randn(2, 70, 9, 8).to(dtype), torch.randn(6, 70, 3, 3).to(dtype)
    if layout == "channels_last":
        xv = x.contiguous(memory_format=torch.channels_last)
    else:
        big = torch.randn(4, 140, 9, 16).to(dtype)
        big[::2, ::2, :, ::2] = x
        xv = big[::2, ::2, :, ::2]
    assert torch.equal(EF.binary_conv2d(xv, w, 1, 1), conv_truth(x, w, 1, 1, 1))


def test_nan_and_empty(engine):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3)
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        EF.binary_conv2d(x, w, 1, 1)
    assert EF.binary_conv2d(torch.randn(0, 5, 6, 6), torch.randn(4, 5, 3, 3), 1, 1).shape == (0, 4, 6, 6)
    assert EF.binary_conv2d(torch.randn(2, 5, 6, 6), torch.randn(0, 5, 3, 3), 1, 1).shape == (2, 0, 6, 6)


@pytest.mark.parametrize("cfg", GRID[:16], ids=lambda c: IDS(**c))
def test_fused_epilogue_identical_to_xnor(engine, cfg):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"]) + 0.3
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    args = (cfg["s"], cfg["p"], cfg["d"])
    wp = ops.pack_conv_weight(w)
    scale, bias, ones = torch.rand(cfg["o"]) + 0.5, torch.randn(cfg["o"]), torch.randn(cfg["o"])
    kw = dict(x_shift=0.3, out_scale=scale, out_bias=bias, ones_scale=ones)
    y = ops.binary_conv2d_packed(x, wp, *args, **kw)
    torch.testing.assert_close(y.double(), fused_truth(x, w, *args, 0.3, scale, bias, ones), rtol=1e-6, atol=1e-4)
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(y, ops.binary_conv2d_packed(x, wp, *args, **kw))


def test_amx_emulation_is_not_amx(native):
    # The emulation switch makes "amx" usable without the hardware but never claims the hardware.
    C._set_amx_emulated(True)
    assert erbnn_ext.backend_info()["amx"] == C.amx_available()
    # usable on the avx512 path only (an ERBNN_CPU_ISA / set_cpu_isa cap below it disables the int8 engines)
    on_avx512 = erbnn_ext.backend_info()["cpu_isa"].startswith("avx512")
    assert ("amx" in erbnn_ext.backend_info()["conv_engines"]) == (on_avx512 and not AMX_DISABLED_AT_START)
    C._set_amx_emulated(False)
    assert ("amx" in erbnn_ext.backend_info()["conv_engines"]) == _amx_usable()


def test_opcheck(engine):
    x, w = torch.randn(2, 33, 6, 5), torch.randn(4, 33, 3, 3)
    wp = ops.pack_conv_weight(w)
    op = torch.ops.erbnn.binary_conv2d_packed.default
    torch.library.opcheck(op, (x, wp, [1, 2], [1, 1], [1, 1], torch.tensor([0.2]), torch.rand(4), torch.randn(4), torch.randn(1)))
    torch.library.opcheck(torch.ops.erbnn.binary_conv2d.default, (x, w, [2, 1], [1, 0], [1, 2]))


# ------------------------------------------------------------------------------ choice and overrides
def test_backend_info_lists_engines(native):
    info = erbnn_ext.backend_info()
    assert info["conv_engines"][0] == "xnor"
    assert set(info["conv_engines"]) <= set(ENGINES)
    assert ("amx" in info["conv_engines"]) == _amx_usable()


def test_auto_choice_identical_and_cached(native):
    erbnn_ext.set_conv_engine("auto")
    C._clear_conv_engine_cache()
    x, w = torch.randn(2, 64, 10, 10), torch.randn(32, 64, 3, 3)
    wp = ops.pack_conv_weight(w)
    kw = dict(x_shift=0.1, out_scale=torch.rand(32), out_bias=torch.randn(32), ones_scale=torch.randn(32))
    y = ops.binary_conv2d_packed(x, wp, 1, 1, **kw)
    choices = C._conv_engine_choices()
    assert len(choices) == 1 and list(choices.values())[0] in _available()
    assert list(choices)[0] == "C64 H10 W10 O32 k3x3 s1,1 p1,1 d1,1"  # the shape, not the batch
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1, **kw), y)  # cached path
    assert C._conv_engine_choices() == choices
    # another batch size and thread count: the same key, no new entry
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        y5 = ops.binary_conv2d_packed(torch.cat([x] * 3)[:5], wp, 1, 1, **kw)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(y5[:2], y) and C._conv_engine_choices() == choices
    for name in _available():
        erbnn_ext.set_conv_engine(name)
        assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1, **kw), y)
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1, x_shift=0.1), conv_truth(x - 0.1, w, 1, 1, 1))


def test_env_override_read_per_call(native, monkeypatch):
    erbnn_ext.set_conv_engine(None)
    assert erbnn_ext.get_conv_engine() == "auto"
    monkeypatch.setenv("ERBNN_CONV_ENGINE", "xnor")
    assert erbnn_ext.get_conv_engine() == "xnor"
    x, w = torch.randn(1, 5, 4, 4), torch.randn(3, 5, 3, 3)
    C._clear_conv_engine_cache()
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
    assert C._conv_engine_choices() == {}  # forced: no trial ran
    monkeypatch.setenv("ERBNN_CONV_ENGINE", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        EF.binary_conv2d(x, w, 1, 1)
    erbnn_ext.set_conv_engine("xnor")  # the setter wins over the environment
    assert erbnn_ext.get_conv_engine() == "xnor"
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))


def test_bad_engine_name(native):
    with pytest.raises(ValueError, match="conv engine"):
        erbnn_ext.set_conv_engine("int4")
    with pytest.raises(ValueError, match="int4"):
        C.set_conv_engine("int4")


def _request_engine(name, how, monkeypatch):
    """Ask for engine `name` by erbnn_ext.set_conv_engine ("setter") or ERBNN_CONV_ENGINE ("env")."""
    if how == "setter":
        erbnn_ext.set_conv_engine(name)
    else:
        monkeypatch.setenv("ERBNN_CONV_ENGINE", name)


@pytest.mark.parametrize("how", ["setter", "env"])
def test_unavailable_engine_error_and_fallback(native, monkeypatch, how):
    C._set_amx_disabled(True)  # simulate a machine without AMX (a no-op where AMX is absent anyway)
    assert "amx" not in erbnn_ext.backend_info()["conv_engines"]
    x, w = torch.randn(1, 8, 5, 5), torch.randn(4, 8, 3, 3)
    _request_engine("amx", how, monkeypatch)
    with pytest.raises(RuntimeError, match="engine 'amx' is not available"):
        EF.binary_conv2d(x, w, 1, 1)
    # auto falls back to the engines that exist, exactly
    erbnn_ext.set_conv_engine("auto")
    C._clear_conv_engine_cache()
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
    assert "amx" not in C._conv_engine_choices().values()


def test_int8_engines_follow_the_isa_cap(native):
    prev = erbnn_ext.backend_info()["cpu_isa"]
    try:
        erbnn_ext.set_cpu_isa("avx2")
        # onednn_int8 (oneDNN picks its own ISA; its input pass and epilogue have scalar paths) stays
        assert erbnn_ext.backend_info()["conv_engines"] == ["xnor"] + (["onednn_int8"] if _onednn_usable() else [])
        erbnn_ext.set_conv_engine("int8_vnni")
        with pytest.raises(RuntimeError, match="int8_vnni"):
            EF.binary_conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), 1, 1)
    finally:
        erbnn_ext.set_cpu_isa({"avx512_vpopcntdq": "avx512"}.get(prev, prev))


def test_disable_amx_env_read_at_load(native):
    # ERBNN_DISABLE_AMX=1 at import hides AMX even where it (or its emulation) would be usable.
    import os
    import subprocess
    import sys
    code = ("import erbnn_ext; C = erbnn_ext._native._C; C._set_amx_emulated(True); "
            "print(','.join(erbnn_ext.backend_info()['conv_engines']))")
    env = dict(os.environ, ERBNN_DISABLE_AMX="1")
    env.pop("ERBNN_CONV_ENGINE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "amx" not in out.stdout.strip().split(",") and "xnor" in out.stdout


def _reason_times(reason):
    """{engine: ms} from a "measured: xnor 0.012 ms, int8_vnni 0.020 ms" reason."""
    assert reason.startswith("measured:"), reason
    parts = [p.split() for p in reason[len("measured:"):].split(",")]
    return {name: float(ms) for name, ms, unit in parts}


def test_auto_choice_is_measured_and_bounded(native):
    # Each new shape is timed on every candidate engine once; the fastest is recorded with the timings;
    # the record of choices never grows past 256 keys.
    erbnn_ext.set_conv_engine("auto")
    C._clear_conv_engine_cache()
    for hw in range(1, 300):
        EF.binary_conv2d(torch.randn(1, 3, hw, 1), torch.randn(2, 3, 1, 1))
    choices = C._conv_engine_choices()
    assert len(choices) == 256 and "C3 H299 W1 O2 k1x1 s1,1 p0,0 d1,1" in choices
    assert "C3 H1 W1 O2 k1x1 s1,1 p0,0 d1,1" not in choices  # the oldest went first
    assert set(erbnn_ext._native.conv_engine_reasons()) == set(choices)
    # O = 1 with a long reduction: the int8 engines would take ~16x the weights' memory: xnor, untimed
    EF.binary_conv2d(torch.randn(1, 4096, 3, 3), torch.randn(1, 4096, 3, 3))
    key = "C4096 H3 W3 O1 k3x3 s1,1 p0,0 d1,1"
    assert C._conv_engine_choices()[key] == "xnor"
    assert "16x" in erbnn_ext._native.conv_engine_reasons()[key]
    x, w = torch.randn(2, 64, 8, 8), torch.randn(64, 64, 3, 3)
    y = EF.binary_conv2d(x, w, 1, 1)
    key = "C64 H8 W8 O64 k3x3 s1,1 p1,1 d1,1"
    chosen, reason = C._conv_engine_choices()[key], erbnn_ext._native.conv_engine_reasons()[key]
    auto_engines = [e for e in _available() if e != "amx" or _amx_usable()]
    if len(auto_engines) == 1:
        assert chosen == "xnor" and reason == "the only engine available"
    else:
        times = _reason_times(reason)
        assert sorted(times) == sorted(auto_engines)
        assert times[chosen] == min(times.values())
    assert torch.equal(y, conv_truth(x, w, 1, 1, 1))  # the output the trials left is the exact one


def test_auto_never_picks_emulated_amx(native):
    C._set_amx_emulated(True)
    erbnn_ext.set_conv_engine("auto")
    C._clear_conv_engine_cache()
    x, w = torch.randn(1, 64, 6, 6), torch.randn(32, 64, 3, 3)
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
    if not _amx_usable():
        assert "amx" not in erbnn_ext._native.conv_engine_reasons()["C64 H6 W6 O32 k3x3 s1,1 p1,1 d1,1"]


# ------------------------------------------------------------------------------ AMX tile state
def _tile_config_fields(cfg):
    b = bytes(cfg)
    assert len(b) == 64
    colsb = [int.from_bytes(b[16 + 2 * i:18 + 2 * i], "little") for i in range(16)]
    return b[0], b[1], b[2:16], colsb, list(b[48:64])


def test_tile_config_is_the_intended_one(native):
    # The configuration object the kernel hands to LDTILECFG (palette 1; the 2x2 register block's 4 C, 2 A
    # and 2 B tiles of 16 rows x 64 bytes; everything else zero), as compiled: a compiler that dropped its
    # stores shows here too.
    palette, start_row, reserved, colsb, rows = _tile_config_fields(C._amx_tile_config())
    assert (palette, start_row) == (1, 0) and reserved == bytes(14)
    assert colsb == [64] * 8 + [0] * 8 and rows == [16] * 8 + [0] * 8


def test_tile_config_loaded_reads_back(native):
    # What LDTILECFG really loaded, read back with STTILECFG, equals the intended configuration.
    if not C.amx_available():
        pytest.skip(f"no usable AMX tiles on this CPU: {C.amx_status()}")
    assert C._amx_tile_config_loaded() == C._amx_tile_config()


def test_self_test_child_verdicts(native):
    # The machinery that keeps a faulting tile instruction out of the user's process, on any CPU: a child
    # that dies of a signal or reports a mismatch turns into a reason, and the parent lives on.
    assert C._amx_probe_outcome("pass") == ""
    assert "another tile configuration" in C._amx_probe_outcome("config")
    assert "TDPBSSD" in C._amx_probe_outcome("block")
    assert "died of signal" in C._amx_probe_outcome("fault")
    with pytest.raises(ValueError, match="mode"):
        C._amx_probe_outcome("bogus")


def test_amx_status_says_why(native):
    status = C.amx_status()
    assert status
    if C.amx_available():
        assert status.startswith("usable") or status.startswith("disabled") or status.startswith("off:")
    else:
        assert not status.startswith("usable")
        with pytest.raises(RuntimeError, match="AMX is not usable here"):
            C._amx_tile_config_loaded()
    C._set_amx_disabled(True)
    assert C.amx_status().startswith("disabled")
    erbnn_ext.set_conv_engine("amx")
    with pytest.raises(RuntimeError, match="amx: disabled"):
        EF.binary_conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), 1, 1)


def test_disable_amx_survives_the_reset_fixture(native, tmp_path):
    # With ERBNN_DISABLE_AMX=1, the per-test reset must restore "disabled", not switch AMX back on (a later
    # test then ran the tiles on a host where the user had turned them off).
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    probe = tmp_path / "test_disable_probe.py"
    probe.write_text(
        "import erbnn_ext\n"
        "from test_conv_engines import _reset_engine  # noqa: F401\n"
        "C = erbnn_ext._native._C\n"
        "def test_a_switches_amx_off():\n"
        "    C._set_amx_disabled(True)\n"
        "def test_b_finds_it_still_off():\n"
        "    C._set_amx_emulated(True)\n"
        "    assert 'amx' not in erbnn_ext.backend_info()['conv_engines']\n")
    import subprocess
    import sys
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(erbnn_ext.__file__)))  # this erbnn_ext
    env = dict(os.environ, ERBNN_DISABLE_AMX="1",
               PYTHONPATH=os.pathsep.join([tests_dir, package_root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          str(probe)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout + out.stderr


def test_weights_cache_follows_the_content(engine):
    # Derived weights (tap statistics, int8 / dense layouts) are cached per packed-weight content: editing
    # the packed tensor in place (even through .data, which does not bump the version) changes the result.
    x, w = torch.randn(2, 40, 7, 7), torch.randn(8, 40, 3, 3)
    wp = ops.pack_conv_weight(w)
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1), conv_truth(x, w, 1, 1, 1))
    w2 = -w
    wp.data.copy_(ops.pack_conv_weight(w2))
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1), conv_truth(x, w2, 1, 1, 1))


def test_tail_bits_checked(engine):
    x, w = torch.randn(1, 40, 5, 5), torch.randn(3, 40, 3, 3)
    wp = ops.pack_conv_weight(w)
    bad = wp.clone()
    bad[1, 2, 0, 0] |= 1 << 45  # channel 45 of a 40-channel weight
    with pytest.raises(ValueError, match="w_packed"):
        ops.binary_conv2d_packed(x, bad, 1, 1)
    from erbnn_ext import reference as R
    with pytest.raises(ValueError, match="w_packed"):
        R.binary_conv2d_packed(x, bad, [1, 1], [1, 1], [1, 1])
    # the same words are fine for a conv whose x really has 64 channels
    x64 = torch.randn(1, 64, 5, 5)
    assert ops.binary_conv2d_packed(x64, bad, 1, 1).shape == (1, 3, 5, 5)


def test_float64_signs_not_rounded_through_float(engine):
    # -1e-300 is negative (sign -1) in float64 although float32(-1e-300) == -0.0 (sign +1).
    x = torch.full((1, 5, 4, 4), 1e-300, dtype=torch.float64)
    x[0, :, ::2] = -1e-300
    w = torch.full((3, 5, 3, 3), -1e-300, dtype=torch.float64)
    w[:, ::2] = 1e-300
    truth = conv_truth(x, w, 1, 1, 1)
    assert not torch.equal(truth, conv_truth(x.float(), w.float(), 1, 1, 1))  # float32 would flip the signs
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), truth)
    wp = ops.pack_conv_weight(w)
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 1), truth)
    # a float64 shift next to a float64 x: compared in float64
    shift = torch.tensor([1e-300], dtype=torch.float64)
    y = torch.ops.erbnn.binary_conv2d_packed.default(x, wp, [1, 1], [1, 1], [1, 1], shift)
    assert torch.equal(y, conv_truth(torch.where(x >= 1e-300, 1.0, -1.0), w, 1, 1, 1))


@pytest.mark.parametrize("cfg", GRID[:12], ids=lambda c: IDS(**c))
def test_fused_tail_identical_to_xnor(engine, cfg):
    from erbnn_ext import ops
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    w = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"])
    pair = lambda v: [v, v]
    args = (pair(cfg["s"]), pair(cfg["p"]), pair(cfg["d"]))
    wp = ops.pack_conv_weight(w)
    o = cfg["o"]
    kw = dict(x_shift=0.2, out_scale=torch.rand(o), out_bias=torch.randn(o), ones_scale=torch.randn(o),
              act=torch.stack([torch.randn(o), torch.rand(o), torch.randn(o)]))
    residual = torch.randn_like(ops.binary_conv2d_packed(x, wp, cfg["s"], cfg["p"], cfg["d"]))
    y = ops.binary_conv2d_packed(x, wp, *args, residual=residual, **kw)
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(y, ops.binary_conv2d_packed(x, wp, *args, residual=residual, **kw))


# ------------------------------------------------------------------------------ onednn_int8
# The schema of onednn::qconv2d_pointwise / qconv_prepack as torch 2.14 declares them.
QCONV_2_14 = ("onednn::qconv2d_pointwise(Tensor qx, float x_scale, int x_zero_point, Tensor qw, Tensor w_scale, "
              "Tensor w_zero_point, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, "
              "float output_scale, int output_zero_point, ScalarType? output_dtype, str attr, Scalar?[] scalars, "
              "str? algorithm) -> Tensor")
PREPACK_2_14 = ("onednn::qconv_prepack(Tensor weight, Tensor w_scales, float x_scale, int x_zp, int[] stride, "
                "int[] padding, int[] dilation, int groups, int[]? x_shape=None) -> Tensor")


def test_onednn_schema_reader(native):
    problem = C._onednn_schema_problem
    assert problem(QCONV_2_14) == "" and problem(PREPACK_2_14) == ""
    # an argument added with a default keeps its default; one without a default is refused by name
    assert problem(QCONV_2_14.replace(") -> Tensor", ", int extra=0) -> Tensor")) == ""
    assert "mystery" in problem(QCONV_2_14.replace(") -> Tensor", ", int mystery) -> Tensor"))
    # a known name with a type the engine does not know how to fill
    assert "x_scale" in problem(QCONV_2_14.replace("float x_scale", "str x_scale"))
    # the scale as a tensor (the .tensor overload's form) is understood
    assert problem(QCONV_2_14.replace("float x_scale, int x_zero_point", "Tensor x_scale, Tensor x_zero_point")) == ""
    assert "missing" in problem(QCONV_2_14.replace("Tensor qw, ", ""))
    assert "one Tensor" in problem(QCONV_2_14.replace("-> Tensor", "-> (Tensor, Tensor)"))


def test_onednn_status_says_why(native):
    status = C.onednn_status()
    assert status.startswith("usable") or status.startswith("unavailable: ")
    assert erbnn_ext.backend_info()["onednn_status"] == status
    assert ("onednn_int8" in _available()) == status.startswith("usable")


@pytest.mark.parametrize("how", ["setter", "env"])
def test_onednn_unavailable_error_and_auto_skips_it(native, monkeypatch, how):
    # The path of a torch without the ops or with a schema the engine does not read: no engine, a reason.
    C._set_onednn_disabled(True)
    assert C.onednn_status().startswith("disabled")
    assert "onednn_int8" not in erbnn_ext.backend_info()["conv_engines"]
    x, w = torch.randn(2, 64, 8, 8), torch.randn(32, 64, 3, 3)
    _request_engine("onednn_int8", how, monkeypatch)
    with pytest.raises(RuntimeError, match="onednn_int8: disabled"):
        EF.binary_conv2d(x, w, 1, 1)
    erbnn_ext.set_conv_engine("auto")
    monkeypatch.delenv("ERBNN_CONV_ENGINE", raising=False)
    C._clear_conv_engine_cache()
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
    key = "C64 H8 W8 O32 k3x3 s1,1 p1,1 d1,1"
    assert C._conv_engine_choices()[key] != "onednn_int8"
    assert "onednn_int8" not in erbnn_ext._native.conv_engine_reasons()[key]


def test_onednn_is_an_auto_candidate(native):
    if not _onednn_usable():
        pytest.skip(f"onednn_int8 not available: {C.onednn_status()}")
    erbnn_ext.set_conv_engine("auto")
    C._clear_conv_engine_cache()
    x, w = torch.randn(2, 64, 8, 8), torch.randn(32, 64, 3, 3)
    assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
    assert "onednn_int8" in _reason_times(erbnn_ext._native.conv_engine_reasons()["C64 H8 W8 O32 k3x3 s1,1 p1,1 d1,1"])


def _onednn_engine():
    if not _onednn_usable():
        pytest.skip(f"onednn_int8 not available: {C.onednn_status()}")
    erbnn_ext.set_conv_engine("onednn_int8")


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_onednn_scalar_paths_identical_to_xnor(native, isa):
    # Below the avx512 path the u8 input pass and the epilogue run their scalar code: the same bits.
    _onednn_engine()
    prev = erbnn_ext.backend_info()["cpu_isa"]
    cases = [(2, 70, 9, 3, 1, 1, 1, 9, 20), (1, 129, 17, 3, 2, 1, 1, 7, 8), (3, 5, 64, 1, 1, 0, 1, 4, 5),
             (1, 33, 40, 3, 1, 2, 2, 9, 9)]
    try:
        for n, c, o, k, s, p, d, h, wd in cases:
            x, w = torch.randn(n, c, h, wd) + 0.2, torch.randn(o, c, k, k)
            wp = ops.pack_conv_weight(w)
            kw = dict(x_shift=0.2, out_scale=torch.rand(o) + 0.5, out_bias=torch.randn(o), ones_scale=torch.randn(o),
                      act=torch.stack([torch.randn(o), torch.rand(o), torch.randn(o)]))
            chain = dict({k: v for k, v in kw.items() if k != "x_shift"}, in_channels=c, next_shift=torch.tensor([0.1]))
            erbnn_ext.set_cpu_isa(isa)
            erbnn_ext.set_conv_engine("onednn_int8")
            y = ops.binary_conv2d_packed(x, wp, s, p, d, **kw)
            xcl = ops.binary_conv2d_packed(x.contiguous(memory_format=torch.channels_last), wp, s, p, d, **kw)
            xb = torch.where(x >= 0.2, 1.0, -1.0)
            bits = ops.binary_conv2d_bits(ops.pack_signs(xb).contiguous(), wp, s, p, d, **chain)
            erbnn_ext.set_cpu_isa({"avx512_vpopcntdq": "avx512"}.get(prev, prev))
            erbnn_ext.set_conv_engine("xnor")
            assert torch.equal(y, ops.binary_conv2d_packed(x, wp, s, p, d, **kw))
            assert torch.equal(xcl, y)
            want = ops.binary_conv2d_bits(ops.pack_signs(xb).contiguous(), wp, s, p, d, **chain)
            assert torch.equal(bits[0], want[0]) and torch.equal(bits[1], want[1])
    finally:
        erbnn_ext.set_cpu_isa({"avx512_vpopcntdq": "avx512"}.get(prev, prev))


def test_onednn_wide_rows_and_channels(native):
    # The avx512 input pass: rows of more than 16 pixels with a tail, channels over 64 with a tail, both
    # layouts of x; float64 and the packed form.
    # Several rows per pass, split between threads mid-image; rows of over 2048 pixels take the plain loop.
    _onednn_engine()
    prev = torch.get_num_threads()
    try:
        for threads, (n, c, h, wd, o) in [(1, (2, 200, 21, 24, 70)), (2, (3, 64, 33, 36, 16)), (2, (2, 65, 16, 19, 3)),
                                          (2, (1, 3, 2, 2050, 4))]:
            torch.set_num_threads(threads)
            x, w = torch.randn(n, c, h, wd), torch.randn(o, c, 3, 3)
            truth = conv_truth(x, w, 1, 1, 1)
            assert torch.equal(EF.binary_conv2d(x, w, 1, 1), truth)
            assert torch.equal(EF.binary_conv2d(x.contiguous(memory_format=torch.channels_last), w, 1, 1), truth)
            assert torch.equal(EF.binary_conv2d(x.double(), w.double(), 1, 1), truth)
            wp = ops.pack_conv_weight(w)
            xb = ops.pack_signs(torch.where(x >= 0, 1.0, -1.0)).contiguous()
            assert torch.equal(ops.binary_conv2d_bits(xb, wp, 1, 1, 1, in_channels=c)[0], truth)
    finally:
        torch.set_num_threads(prev)


def test_onednn_prepack_per_geometry(native):
    # One packed weight used at two strides / paddings: a prepacked copy per geometry, each exact.
    _onednn_engine()
    x, w = torch.randn(2, 48, 10, 10), torch.randn(24, 48, 3, 3)
    wp = ops.pack_conv_weight(w)
    for s, p, d in [(1, 1, 1), (2, 0, 1), (1, 1, 1), (1, 2, 2)]:
        assert torch.equal(ops.binary_conv2d_packed(x, wp, s, p, d), conv_truth(x, w, s, p, d))


def test_onednn_nan_in_packed_path_and_threads(native):
    _onednn_engine()
    x, w = torch.randn(3, 80, 6, 6), torch.randn(130, 80, 3, 3)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(EF.binary_conv2d(x, w, 1, 1), conv_truth(x, w, 1, 1, 1))
        x[1, 70, 5, 5] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            EF.binary_conv2d(x, w, 1, 1)
        with pytest.raises(ValueError, match="NaN"):
            EF.binary_conv2d(x.contiguous(memory_format=torch.channels_last), w, 1, 1)
    finally:
        torch.set_num_threads(prev)


def test_onednn_wide_kernel_frame(native):
    # Kernels wider than the epilogue's column-mask table (32 taps) take its per-tap path: the out-of-frame
    # corrections of the ones term still match xnor's.
    _onednn_engine()
    x, w = torch.randn(2, 7, 4, 40), torch.randn(5, 7, 2, 37)
    wp = ops.pack_conv_weight(w)
    kw = dict(out_scale=torch.rand(5) + 0.5, out_bias=torch.randn(5), ones_scale=torch.randn(5))
    y = ops.binary_conv2d_packed(x, wp, 1, 3, 1, **kw)
    assert torch.equal(ops.binary_conv2d_packed(x, wp, 1, 3, 1), conv_truth(x, w, 1, 3, 1))
    erbnn_ext.set_conv_engine("xnor")
    assert torch.equal(y, ops.binary_conv2d_packed(x, wp, 1, 3, 1, **kw))
