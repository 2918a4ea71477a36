"""Minimal reproducer of two torch defects of bfloat16 F.conv2d on the CPU (oneDNN), not erbnn_ext's.

`--amp bf16` runs the float convolutions (a stem, shortcuts) under torch.autocast in bfloat16. On some
CPUs torch's bfloat16 conv
1. gives wrong results (hundreds off, sometimes NaN) for some shapes with non-square kernels or uneven
   stride / dilation (seen on an Intel Xeon with torch 2.14.1: 4 of 250 random shapes), and
2. crashes the process (SIGSEGV) for input [2, 129, 26, 1], weight [5, 129, 7, 1], stride 3, padding 2,
   dilation 3.
ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 (set before torch starts) avoided the first. The paper's models use
square 3x3 / 1x1 kernels with equal strides, which were not affected.

    python tools/repro_bf16_conv.py                 # random shapes: bf16 conv against float64 of the same bf16 inputs
    python tools/repro_bf16_conv.py --shapes 250 --seed 0
    python tools/repro_bf16_conv.py --crash         # the crashing shape, in a child process (reports the signal)

Exit status: 0 when nothing wrong was seen, 1 when a wrong result or the crash was reproduced.
Only torch is needed; erbnn_ext is not imported.
"""
import argparse
import os
import random
import subprocess
import sys

import torch
import torch.nn.functional as F

CRASH = dict(input=(2, 129, 26, 1), weight=(5, 129, 7, 1), stride=3, padding=2, dilation=3)


def random_case(rng):
    """A random conv with possibly non-square kernel and uneven stride / dilation, valid output size."""
    while True:
        n, c, o = rng.randint(1, 3), rng.randint(1, 160), rng.randint(1, 16)
        kh, kw = rng.randint(1, 7), rng.randint(1, 7)
        sh, sw, dh, dw = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 3)
        ph, pw = rng.randint(0, 3), rng.randint(0, 3)
        h, w = rng.randint(1, 30), rng.randint(1, 30)
        if h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1:
            return dict(input=(n, c, h, w), weight=(o, c, kh, kw), stride=(sh, sw), padding=(ph, pw),
                        dilation=(dh, dw))


def check(case, seed):
    """Max |bf16 conv - float64 conv of the same bf16 values|, and the bound a correct bf16 conv keeps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case["input"], generator=g).bfloat16()
    w = torch.randn(case["weight"], generator=g).bfloat16()
    kw = {k: case[k] for k in ("stride", "padding", "dilation")}
    got = F.conv2d(x, w, **kw).double()
    ref = F.conv2d(x.double(), w.double(), **kw)
    # bf16 output rounding (2^-8 relative) plus float32 accumulation of C*kh*kw products
    terms = case["weight"][1] * case["weight"][2] * case["weight"][3]
    bound = 2 ** -7 * ref.abs().max().item() + 1e-5 * terms + 1e-3
    err = (got - ref).abs().max().item() if got.numel() else 0.0
    return err, bound


def run_crash():
    code = ("import torch, torch.nn.functional as F\n"
            f"x = torch.randn({CRASH['input']}).bfloat16(); w = torch.randn({CRASH['weight']}).bfloat16()\n"
            f"F.conv2d(x, w, stride={CRASH['stride']}, padding={CRASH['padding']}, dilation={CRASH['dilation']})\n"
            "print('no crash')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode < 0:
        print(f"CRASH: bf16 F.conv2d {CRASH} killed the child process by signal {-r.returncode}")
        return 1
    print(f"no crash (exit status {r.returncode}) for {CRASH}: {r.stdout.strip() or r.stderr.strip()[-300:]}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=250, help="random shapes to try (default 250)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crash", action="store_true", help="run the crashing shape in a child process")
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
          f"mkldnn bf16 supported: {torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    if a.crash:
        return run_crash()
    rng, bad = random.Random(a.seed), 0
    for i in range(a.shapes):
        case = random_case(rng)
        err, bound = check(case, a.seed * 100003 + i)
        if not err <= bound:  # also NaN
            bad += 1
            print(f"WRONG: {case}: max error {err:.4g} (a correct bf16 conv stays within {bound:.3g})")
    print(f"{bad} of {a.shapes} shapes wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
