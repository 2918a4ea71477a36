"""Launch every CUDA kernel of erbnn_ext at least once, on small shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck|racecheck|synccheck python tools/sanitize_kernels.py
    python tools/sanitize_kernels.py --device cpu     # the same calls on the CPU (a check of this script)
    python tools/sanitize_kernels.py --device emu     # the CUDA kernels on the CPU emulator (erbnn_ext._C_emu)

Each op runs forward and backward in every float dtype its kernel is instantiated for, with shapes that
leave partial tiles and odd tails (word boundaries 32/64, strides, padding, dilation), both binary-conv
kernels (b1 tensor-core and __popc, through ERBNN_CUDA_MMA), and the quantile's radix passes. It checks
each result against the CPU kernel, so a run that launches but computes garbage fails too. Exit 0 when all
agree (the sanitizer's own findings are reported by its exit status, --error-exitcode).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, built in place
import erbnn_ext  # noqa: E402,F401  (loads the kernels)
from erbnn_ext import reference as R  # noqa: E402

ops = torch.ops.erbnn  # the CPU kernels: the reference side
dev_ops = ops         # the side under test: torch.ops.erbnn on CUDA tensors, or torch.ops.erbnn_emu (--device emu)
DEV = "cuda"  # --device cpu: every call on the CPU against itself (no GPU needed); emu: CPU tensors
EMU = False
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
failures = []


TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # 2 ulp; float32/float64 results: 1e-4


def same(name, got, want, exact=True):
    got, want = got.cpu(), want.cpu()
    tol = TOL.get(want.dtype, 1e-4)
    ok = torch.equal(got, want) if exact else torch.allclose(got.double(), want.double(), rtol=tol, atol=tol)
    if not ok:
        failures.append(name)
        print(f"MISMATCH {name}", flush=True)


def both(name, *cpu_args):
    """Op `name` under test on device copies of the arguments, and the CPU kernel on the CPU ones."""
    cuda_args = [a.to(DEV, copy=True) if isinstance(a, torch.Tensor) else a for a in cpu_args]
    return getattr(dev_ops, name)(*cuda_args), getattr(ops, name)(*cpu_args)


def cuda_words(x, dim):
    """pack_signs's expected CUDA words (int32): the reference's on CUDA; with the emulator (CPU
    tensors) the CPU's int64 words split into their little-endian halves."""
    if not EMU:
        return R.pack_signs(x, dim)
    n = x.shape[dim]
    return R.pack_signs(x, dim).contiguous().view(torch.int32)[..., : (n + 31) // 32]


def restorations():
    for dt in DTYPES:
        w = torch.randn(5, 3, 3, 3).to(dt)
        b = R.as_width(0.7, w)  # the surrogate width, in the op's accumulation dtype
        for got, want in zip(*both("restore_weight", w)):
            same(f"restore_weight {dt}", got, want, exact=False)
        wb, mean, alpha = ops.restore_weight(w)
        g = torch.randn_like(w)
        same(f"_restore_weight_backward {dt}", *both("_restore_weight_backward", g, w, mean, alpha, b),
             exact=False)

        x = torch.randn(3, 4, 5, 7).to(dt)
        for got, want in zip(*both("restore_activation", x)):
            same(f"restore_activation {dt}", got, want, exact=False)
        y, m, s, rms = ops.restore_activation(x)
        gy = torch.randn_like(x)
        same(f"_restore_activation_backward {dt}",
             *both("_restore_activation_backward", gy, x, m, s, rms, b), exact=False)
        same(f"restore_activation_fixed {dt}", *both("restore_activation_fixed", x, m, s), exact=False)
        same(f"_restore_activation_fixed_backward {dt}",
             *both("_restore_activation_fixed_backward", gy, x, m, s, b), exact=False)

        same(f"approx_sign {dt}", *both("approx_sign", x))
        same(f"_approx_sign_backward {dt}", *both("_approx_sign_backward", gy, x, b), exact=False)


def ring(size, count=0):
    return [torch.zeros(size, dtype=torch.float64), torch.tensor(count, dtype=torch.int64)]


def training_steps():
    """The fused training-step ops: restoration + quantile + ring pushes, state mutated in place."""
    p = torch.tensor(0.8, dtype=torch.float64)
    for dt in DTYPES:
        w, x = torch.randn(6, 5, 3, 3).to(dt), torch.randn(3, 4, 5, 7).to(dt)
        for count in (0, 5):  # an empty ring and a full one (wrap-around)
            wstate = ring(3, count) + [torch.tensor(0.25, dtype=torch.float64)]
            astate = wstate + ring(4, count) + ring(4, count)
            for name, t, st in (("restore_weight_train", w, wstate), ("restore_activation_train", x, astate)):
                st_cuda = [s.to(DEV, copy=True) for s in st]
                got = getattr(dev_ops, name)(t.to(DEV, copy=True), p.to(DEV, copy=True), *st_cuda, 0.1)
                want = getattr(ops, name)(t, p, *st, 0.1)
                for i, (g, r) in enumerate(zip(got, want)):
                    same(f"{name} {dt} count={count} out{i}", g, r, exact=False)
                for i, (g, r) in enumerate(zip(st_cuda, st)):
                    same(f"{name} {dt} count={count} state{i}", g, r, exact=False)


def quantile():
    for dt in DTYPES:
        for n in (1, 33, 5000, 70_001):  # one block, several blocks, several radix passes' worth of ties
            x = torch.randn(n).to(dt)
            if n == 5000:
                x = x.round()  # many ties
            got, want = both("two_sided_quantile", x, 0.8)
            same(f"two_sided_quantile {dt} n={n}", got, want)


def packing_and_convs():
    for dt in DTYPES:
        x = torch.randn(2, 65, 3).to(dt).to(DEV, copy=True)  # CUDA packs 32-bit words, the CPU 64-bit: compare with R
        packed = dev_ops.pack_signs(x, 1)
        same(f"pack_signs {dt}", packed, cuda_words(x, 1))
        same(f"unpack_signs {dt}", dev_ops.unpack_signs(packed, 65, 1).float(), R.sign(x).float())
    cases = [((2, 70, 7, 6), (5, 70, 3, 3), [1, 1], [1, 1], [1, 1]),
             ((1, 33, 9, 9), (3, 33, 3, 3), [2, 2], [0, 1], [1, 2]),
             ((2, 130, 5, 5), (66, 130, 1, 1), [1, 1], [0, 0], [1, 1])]
    for mma in ("1", "0"):
        os.environ["ERBNN_CUDA_MMA"] = mma
        for xs, ws, st, pd, dl in cases:
            x, w = torch.randn(xs), torch.randn(ws)
            same(f"binary_conv2d mma={mma} {xs}", *both("binary_conv2d", x, w, st, pd, dl))
            wp = dev_ops.pack_conv_weight(w.to(DEV, copy=True))
            scale, bias, ones = (torch.randn(ws[0]) for _ in range(3))
            shift = torch.tensor(0.1)
            got = dev_ops.binary_conv2d_packed(*(t.to(DEV, copy=True) for t in (x, wp)), st, pd, dl,
                                           *(t.to(DEV, copy=True) for t in (shift, scale, bias, ones)))
            want = ops.binary_conv2d_packed(x, ops.pack_conv_weight(w), st, pd, dl, shift, scale, bias, ones)
            same(f"binary_conv2d_packed mma={mma} {xs}", got, want, exact=False)
        x, w = torch.randn(37, 129), torch.randn(21, 129)
        same(f"binary_linear mma={mma}", *both("binary_linear", x, w))
    os.environ.pop("ERBNN_CUDA_MMA", None)


def main():
    global DEV, EMU, dev_ops
    if sys.argv[1:] == ["--device", "cpu"]:
        DEV = "cpu"
    elif sys.argv[1:] == ["--device", "emu"]:
        from erbnn_ext import _emu

        if _emu.load():
            print(f"sanitize_kernels: {_emu.load()}", file=sys.stderr)
            return 2
        DEV, EMU, dev_ops = "cpu", True, _emu.ops()
    elif sys.argv[1:]:
        print("usage: sanitize_kernels.py [--device cpu|emu]", file=sys.stderr)
        return 2
    if DEV == "cuda" and not torch.cuda.is_available():
        print("sanitize_kernels: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    restorations()
    training_steps()
    quantile()
    packing_and_convs()
    if DEV == "cuda":
        torch.cuda.synchronize()
    where = "the CUDA emulator" if EMU else DEV
    print(f"sanitize_kernels: {'FAILED: ' + ', '.join(failures) if failures else f'all kernels on {where} agree with the CPU'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
