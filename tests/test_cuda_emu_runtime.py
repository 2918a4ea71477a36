"""The CUDA emulator's runtime on its own: each warp intrinsic against the PTX ISA's semantics (shfl.sync
idx/up/down/bfly with width and 64-bit values, vote.sync, match.any.sync, bar.red, the b1 mma fragment
layout), each fault it must report, and the schedules exposing a race."""
import random

import pytest
import torch

from erbnn_ext import _emu
from emu_support import emu_ops

pytestmark = pytest.mark.cuda_emu
FULL = 0xFFFFFFFF
SCHEDULES = ["inorder", "reverse", "ahead", "ahead-reverse", "random:7"]


@pytest.fixture(params=SCHEDULES)
def E(request):
    e = emu_ops()
    with _emu.schedule(request.param):
        yield e


# ---- a model of the CUDA Programming Guide's shuffles (lanes are grouped in segments of `width`)
def shfl_model(vals, args, mode, width, mask):
    out = list(vals)
    for i, _ in enumerate(vals):
        lane, base = i % 32, i - i % 32
        if not (mask >> lane) & 1:
            continue
        seg = lane - lane % width
        a = args[i]
        if mode == 0:  # __shfl_sync: lane srcLane % width of the caller's segment
            src = seg + (a % width)
        elif mode == 1:  # __shfl_up_sync: lane - delta, own value below the segment start
            src = lane - a if lane - a >= seg else lane
        elif mode == 2:  # __shfl_down_sync: lane + delta, own value past the segment end
            src = lane + a if lane + a < seg + width else lane
        else:  # __shfl_xor_sync: lane ^ laneMask; a later segment gives the own value
            src = lane ^ a if (lane ^ a) < seg + width else lane
        out[i] = vals[base + src]
    return out


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
@pytest.mark.parametrize("wide", [False, True])
def test_shfl_matches_ptx(E, mode, width, wide):
    rng = random.Random(mode * 100 + width + wide)
    n = 64
    lo, hi = (-2**63, 2**63 - 1) if wide else (-2**31, 2**31 - 1)
    vals = [rng.randint(lo, hi) for _ in range(n)]
    args = [rng.randrange(0, 32) for _ in range(n)]
    if mode == 3:
        args = [args[0]] * n  # butterflies: one lane mask for the warp
    got = E._emu_probe_shfl(torch.tensor(vals), torch.tensor(args), mode, width, FULL, wide).tolist()
    assert got == shfl_model(vals, args, mode, width, FULL)


def test_shfl_partial_mask_and_high_bits(E):
    # Lanes outside the mask do not take part; sources stay inside it. srcLane uses its low 5 bits only.
    vals = list(range(100, 164))
    mask = 0x0000FFFF
    args = [(i % 16) + 32 * (i % 3) for i in range(64)]
    got = E._emu_probe_shfl(torch.tensor(vals), torch.tensor(args), 0, 32, mask, False).tolist()
    assert got == shfl_model(vals, [a % 32 for a in args], 0, 32, mask)
    down = E._emu_probe_shfl(torch.tensor(vals), torch.tensor([3] * 64), 2, 16, mask, False).tolist()
    assert down == shfl_model(vals, [3] * 64, 2, 16, mask)


@pytest.mark.parametrize("mask", [FULL, 0x0F0F0F0F, 0x80000001])
def test_votes_and_match(E, mask):
    rng = random.Random(mask)
    pred = [rng.choice([0, 0, 1, 5]) for _ in range(64)]
    t = torch.tensor(pred)
    ballot, any_, all_, match = (E._emu_probe_vote(t, k, mask).tolist() for k in range(4))
    for i in range(64):
        lane, base = i % 32, i - i % 32
        if not (mask >> lane) & 1:
            assert ballot[i] == any_[i] == all_[i] == match[i] == -1
            continue
        members = [q for q in range(32) if (mask >> q) & 1]
        want = sum(1 << q for q in members if pred[base + q])
        assert ballot[i] == want
        assert any_[i] == int(want != 0)
        assert all_[i] == int(want == mask)
        assert match[i] == sum(1 << q for q in members if pred[base + q] == pred[i])


@pytest.mark.parametrize("threads", [1, 33, 256])
def test_syncthreads_reductions(E, threads):
    pred = torch.tensor([(i * 7) % 3 == 0 for i in range(threads)], dtype=torch.long)
    for kind, want in ((0, int(bool(pred.any()))), (1, int(bool(pred.all()))), (2, int(pred.sum()))):
        assert E._emu_probe_barrier(pred, kind).tolist() == [want] * threads


def fragments(A, B, C):
    """The lanes' registers of mma.m16n8k256 .b1 from the PTX ISA's fragment tables (g = groupID =
    lane / 4, t = threadID_in_group = lane % 4; A 16 x 256 row-major, B 256 x 8 column-major, as 32-bit
    words along k): a0 = A[g][32t..], a1 = A[g+8][32t..], a2 = A[g][128+32t..], a3 = A[g+8][128+32t..];
    b0 = B[32t..][g], b1 = B[128+32t..][g]; c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]."""
    a, b, c = [], [], []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        a.append([A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4]])
        b.append([B[g][t], B[g][t + 4]])
        c.append([C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]])
    return a, b, c


def as_i32(words):
    return [[w - (1 << 32) if w >= 1 << 31 else w for w in row] for row in words]


@pytest.mark.parametrize("use_xor", [False, True])
def test_mma_b1_fragment_layout(E, use_xor):
    rng = random.Random(int(use_xor))
    A = [[rng.getrandbits(32) for _ in range(8)] for _ in range(16)]  # rows, words of k
    B = [[rng.getrandbits(32) for _ in range(8)] for _ in range(8)]   # columns, words of k
    C = [[rng.randrange(-1000, 1000) for _ in range(8)] for _ in range(16)]
    a, b, c = fragments(A, B, C)
    d = E._emu_probe_mma(torch.tensor(as_i32(a)), torch.tensor(as_i32(b)), torch.tensor(c), use_xor).tolist()
    op = (lambda x, y: x ^ y) if use_xor else (lambda x, y: x & y)
    D = [[C[r][n] + sum(bin(op(A[r][w], B[n][w])).count("1") for w in range(8)) for n in range(8)] for r in range(16)]
    _, _, want = fragments(A, B, D)
    assert d == want


FAULTS = [
    (0, 64, r"__syncthreads reached by only part of the block"),
    (1, 64, r"lane 16 of warp [01] is in the mask but has exited"),
    (2, 64, r"deadlock.*__shfl_xor_sync\(mask ffffffff\).*waits at __syncthreads"),
    (3, 64, r"different __syncthreads variants"),
    (4, 64, r"called by lane 0, which is not in its mask fffffffe"),
    (5, 64, r"reads lane 31, which is not in the mask"),
    (6, 64, r"deadlock.*__ballot_sync.*waits at __shfl_sync"),
    (7, 64, r"__trap\(\) called"),
    (8, 48, r"names lane 16 of warp 1, which this block does not have"),
]


@pytest.mark.parametrize("which,threads,message", FAULTS)
def test_faults_are_reported(E, which, threads, message):
    with pytest.raises(RuntimeError, match=f"(?s)cuda_emu: kernel launched at .*{message}"):
        E._emu_probe_fault(which, threads)
    # The emulator is usable again after a fault.
    assert E._emu_probe_barrier(torch.ones(64, dtype=torch.long), 2).tolist() == [64] * 64


def test_schedules_expose_a_race():
    E = emu_ops()
    want = [101] * 32 + [100] * 32
    results = set()
    for s in SCHEDULES:
        with _emu.schedule(s):
            assert E._emu_probe_race(True).tolist() == want
            results.add(tuple(E._emu_probe_race(False).tolist()))
    assert any(list(r) != want for r in results)  # without the barrier some schedule reads stale values


def test_schedule_names():
    emu_ops()
    with _emu.schedule("random:42"):
        assert _emu.get_schedule() == "random:42"
        with _emu.schedule("ahead"):
            assert _emu.get_schedule() == "ahead"
        assert _emu.get_schedule() == "random:42"
    with pytest.raises(ValueError, match="unknown emulator schedule"):
        _emu.set_schedule("sideways")


def test_invalid_launch_is_reported():
    E = emu_ops()
    with pytest.raises(RuntimeError, match="invalid block size 1025x1x1"):
        E._emu_probe_fault(7, 1025)
