"""Mutation check of the CUDA emulator's tests: does removing one barrier of a reduction, or narrowing
one warp-collective mask, make tests/test_cuda_emu_kernels.py fail under some schedule?

    python tools/emu_mutants.py [--list] [--only NAME_SUBSTRING] [--jobs N]

Builds the emulation library once from csrc/ (build/emu_mutants/base), then per mutant copies csrc/ with
the one line changed, recompiles only the units that include the changed file, links a mutant library
and runs the relevant cuda_emu tests against it (ERBNN_EMU_LIBRARY). Prints, per mutant, CAUGHT with
the schedules of the failing tests, or SURVIVED. Exit 1 if any mutant survived. About 10-15 minutes on
2 cores; not part of `make test`.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "emu_mutants"
FLAGS = ["-O1", "-g0", "-std=c++20", "-ffp-contract=off", "-fPIC", "-fvisibility=hidden", "-Wno-unknown-pragmas",
         "-DERBNN_CUDA_EMU"]

RESTORE = "restore_weight or restore_activation or training"
QUANTILE = "quantile or training"
CONV = "binary_conv2d or fused or chained or linear"
# name, file in csrc/cuda, the line's stripped start, which such line (1-based), replacement (None: drop
# the line; else (old, new) within it), the tests that must catch it (pytest -k)
MUTANTS = [
    ("block_sum: 1st __syncthreads removed", "reduce.cuh", "__syncthreads();", 1, None, RESTORE),
    ("block_sum: 2nd __syncthreads removed", "reduce.cuh", "__syncthreads();", 2, None, RESTORE),
    ("block_sum: 3rd __syncthreads removed", "reduce.cuh", "__syncthreads();", 3, None, RESTORE),
    ("warp_sum: shuffle mask narrowed to 16 lanes", "reduce.cuh", "for (int off = 16", 1,
     ("0xffffffffu", "0x0000ffffu"), RESTORE),
    ("digit_histogram: __syncthreads after zeroing removed", "quantile_kernels.cuh", "__syncthreads();", 1, None,
     QUANTILE),
    ("digit_histogram: __syncthreads_or before the flush removed", "quantile_kernels.cuh",
     "if (__syncthreads_or(", 1, ("__syncthreads_or(first && nonfinite)", "(first && nonfinite)"), QUANTILE),
    ("select_kernel: __syncwarp removed", "quantile_kernels.cuh", "__syncwarp();", 1, None, QUANTILE),
    ("digit_histogram: match_any mask narrowed to 31 lanes", "quantile_kernels.cuh",
     "const unsigned peers = __match_any_sync(", 1, ("kFull", "0x7fffffffu"), QUANTILE),
    ("select_kernel: scan shuffle mask narrowed", "quantile_kernels.cuh", "const long long v = __shfl_up_sync(", 1,
     ("kFull", "0x7fffffffu"), QUANTILE),
    ("min_above_kernel: min shuffle mask narrowed", "quantile_kernels.cuh",
     "for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(", 1, ("kFull", "0x0000ffffu"), QUANTILE),
    ("conv_kernel: __syncthreads after staging removed", "binary_conv.cu", "__syncthreads();", 1, None, CONV),
    ("conv_kernel: __syncthreads before restaging removed", "binary_conv.cu", "__syncthreads();", 2, None, CONV),
]


def torch_flags():
    from torch.utils.cpp_extension import include_paths, library_paths

    return ["-I" + p for p in include_paths()], ["-L" + p for p in library_paths()]


def units():
    """Each emulated unit (csrc/cuda/*.cu but device_support.cu) and the csrc/cuda files it includes."""
    def includes(path, seen):
        for inc in re.findall(r'#include "([^"]+)"', path.read_text()):
            for base in (path.parent, ROOT / "csrc"):
                p = base / inc
                if p.is_file() and p not in seen:
                    seen.add(p)
                    includes(p, seen)
        return seen

    out = {}
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        if cu.name != "device_support.cu":
            out[cu.name] = {p.name for p in includes(cu, {cu}) if p.parent.name == "cuda"}
    return out


def compile_one(src_root, source, obj, inc, newest=None):
    if newest is not None and obj.is_file() and obj.stat().st_mtime > newest:
        return obj  # the base build of unchanged sources: reused
    cmd = ["g++", *FLAGS, f"-I{src_root}/cuda_emu/shim", f"-I{src_root}", *inc, "-c", str(source), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"compile failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return obj


def unit_source(dir_, src_root, cu):
    path = dir_ / (cu[:-3] + ".cpp")
    path.write_text(f'#include "{src_root}/cuda/{cu}"\n')
    return path


def build(src_root, dir_, names, inc, jobs, newest=None):
    dir_.mkdir(parents=True, exist_ok=True)
    work = [(unit_source(dir_, src_root, cu), dir_ / (cu[:-3] + ".o")) for cu in names]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda w: compile_one(src_root, w[0], w[1], inc, newest), work))


def link(objs, lib, libdirs):
    r = subprocess.run(["g++", "-shared", "-o", str(lib), *map(str, objs), *libdirs, "-lc10", "-ltorch", "-ltorch_cpu"],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])


def mutate(text, start, nth, change):
    lines, seen = text.splitlines(keepends=True), 0
    for i, line in enumerate(lines):
        if line.strip().startswith(start):
            seen += 1
            if seen == nth:
                if change is None:
                    lines[i] = "\n"
                else:
                    assert change[0] in line, (start, change)
                    lines[i] = line.replace(change[0], change[1], 1)
                return "".join(lines)
    raise ValueError(f"no line #{nth} starting with {start!r}: the sources changed, update MUTANTS")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.only in m[0]]
    if args.list:
        for m in chosen:
            print(f"{m[0]}  ({m[1]})")
        return 0
    inc, libdirs = torch_flags()
    deps = units()
    t0 = time.time()
    base_dir = OUT / "base"
    src = ROOT / "csrc"
    base_dir.mkdir(parents=True, exist_ok=True)
    newest = max(p.stat().st_mtime for p in src.rglob("*") if p.is_file())
    runtime = [compile_one(src, p, base_dir / (p.stem + ".runtime.o"), inc, newest)
               for p in sorted((src / "cuda_emu").glob("*.cpp"))]
    base = dict(zip(deps, build(src, base_dir, list(deps), inc, args.jobs, newest)))
    print(f"base library built in {time.time() - t0:.0f} s", flush=True)
    survived = []
    for name, file, start, nth, change, tests in chosen:
        t1 = time.time()
        mdir = OUT / "mutant"
        shutil.rmtree(mdir, ignore_errors=True)
        shutil.copytree(src, mdir / "csrc")
        target = mdir / "csrc" / "cuda" / file
        target.write_text(mutate(target.read_text(), start, nth, change))
        touched = [cu for cu, files in deps.items() if file in files]
        objs = dict(base)
        objs.update(zip(touched, build(mdir / "csrc", mdir / "obj", touched, inc, args.jobs)))
        lib = mdir / "libmutant.so"
        link(runtime + list(objs.values()), lib, libdirs)
        env = dict(os.environ, ERBNN_EMU_LIBRARY=str(lib), PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", tests,
                            "tests/test_cuda_emu_kernels.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        failed = re.findall(r"^FAILED \S+::(\S+)", r.stdout, re.M)
        schedules = sorted({s for f in failed for s in re.findall(r"\[(inorder|ahead|random:\d+)", f)})
        verdict = f"CAUGHT ({len(failed)} tests failed; schedules: {', '.join(schedules) or '-'})" if r.returncode \
            else "SURVIVED"
        if not r.returncode:
            survived.append(name)
        elif not failed:  # not a test failure: a build or collection error, which proves nothing
            verdict = "ERROR (no test failed)"
            survived.append(name)
        print(f"{name:58s} {verdict}  [{time.time() - t1:.0f} s]", flush=True)
        if not failed and r.returncode:
            print((r.stdout + r.stderr)[-2000:], flush=True)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutants caught in {time.time() - t0:.0f} s"
          + (f"; not caught: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
