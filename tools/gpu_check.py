"""`make gpu-check`: everything this project can only check on an NVIDIA GPU, in one short run.

On a machine with a GPU and torch installed (no network needed): build the extension for that GPU's
architecture only, against that torch; run the CUDA tests and the CPU-vs-CUDA agreement tests;
compute-sanitizer memcheck, racecheck and synccheck over tools/sanitize_kernels.py; `erbnn bench --device
cuda --quick` and the GPU figures (erbnn_ext.benchmarks.gpu); on a CPU with AMX, the AMX engine tests on
the real tiles and the engines benchmark. Logs and JSON go to one folder ($OUT, else ./gpu_out), at most 8
files; a short summary is printed. Without a GPU it refuses at once (exit 3).

    tools/gpu_check.sh [--dry-run] [--capability X.Y] [--out DIR] [--jobs N] [--skip STEP ...]

--dry-run prints the plan (commands, environment, arch list) and runs nothing; with --capability it needs
no GPU (the arch list it would use for that capability). The interpreter is $PYTHON, else python3.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("build", "tests", "sanitizer", "amx", "bench")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
# Wall-clock caps (seconds) so that the whole run stays under 7 minutes on an H100-class machine.
TIMEOUTS = {"build": 240, "tests": 150, "sanitizer": 150, "amx": 150, "bench": 150}
FILES = ("summary.json", "build.log", "tests.log", "sanitizer.log", "amx.log", "bench.log", "bench.json",
         "gpu_figures.json")


class Refusal(Exception):
    """The check cannot run here (no GPU, no nvcc, ...): message to the user, exit status 3."""


def parse_capability(text):
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"capability must look like 9.0 or 8.6, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def arch_list(capability):
    """TORCH_CUDA_ARCH_LIST for exactly this GPU: its SASS only, no PTX (nothing else will run it).
    Arch-specific features (sm_90a) are not used by the kernels, so the plain arch is enough."""
    major, minor = capability
    return f"{major}.{minor}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    ap.add_argument("--capability", type=parse_capability, default=None,
                    help="compute capability to plan for (default: the GPU's; with --dry-run no GPU needed)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_out", help="output folder (default $OUT or ./gpu_out)")
    ap.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="MAX_JOBS for the build (default: cores)")
    ap.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="leave these steps out")
    args = ap.parse_args(argv)
    if args.capability is not None and not args.dry_run:
        ap.error("--capability is for --dry-run; a real run uses the GPU's own")
    return args


def find_cuda_home():
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
              os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("nvcc") or "/nonexistent/bin/nvcc"))),
              "/usr/local/cuda"):
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
                os.path.join(c, "include", "cuda_runtime.h")):
            return os.path.realpath(c)
    return None


def find_sanitizer(cuda_home):
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    cand = os.path.join(cuda_home or "/usr/local/cuda", "bin", "compute-sanitizer")
    return cand if os.path.isfile(cand) else None


def cpu_has_amx():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return {"amx_tile", "amx_int8"} <= set(flags.split(":", 1)[-1].split())


def build_tools_missing(python):
    """What the build needs from the interpreter's environment and lacks (no network to install it)."""
    code = ("import importlib.metadata as m, shutil\n"
            "v = tuple(int(p) for p in m.version('setuptools').split('.')[:2])\n"
            "print('setuptools>=77' if v < (77, 0) else '')\n"
            "print('' if shutil.which('ninja') or __import__('importlib').util.find_spec('ninja') else 'ninja')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return ["setuptools"]
    return [w for w in out.stdout.split() if w]


def detect_gpu():
    """(name, capability, torch version) of GPU 0, or Refusal naming what is missing."""
    import torch

    if not torch.cuda.is_available():
        smi = shutil.which("nvidia-smi")
        why = "nvidia-smi not found" if smi is None else "nvidia-smi present, but torch sees no device"
        if torch.version.cuda is None:
            why += f"; torch {torch.__version__} is a CPU-only build"
        raise Refusal(f"no NVIDIA GPU: torch.cuda.is_available() is False ({why}). "
                      f"This check needs a machine with an NVIDIA GPU.")
    return torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), torch.__version__


def plan(args, python, capability, cuda_home, sanitizer, amx):
    """The steps: name -> list of (command, extra environment, log file name)."""
    archs = arch_list(capability)
    build_env = {"ERBNN_CUDA": "1", "TORCH_CUDA_ARCH_LIST": archs, "MAX_JOBS": str(args.jobs),
                 "CUDA_HOME": cuda_home or "(not found)"}
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    steps = {
        "build": [([python, "setup.py", "build_ext", "--inplace", "--force"], build_env, "build.log")],
        "tests": [(pytest + ["-m", "cuda or cuda_agreement", "tests"], {}, "tests.log")],
        "sanitizer": [([sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode", "9",
                        "--print-limit", "20", python, "tools/sanitize_kernels.py"],
                       {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if tool == "memcheck" else {}, "sanitizer.log")
                      for tool in SANITIZER_TOOLS],
        "amx": [(pytest + ["tests/test_conv_engines.py", "-k", "amx"], {}, "amx.log"),
                ([python, "-m", "erbnn_ext.benchmarks.engines", "--models", "resnet18", "--batches", "16",
                  "--min-time", "0.1"], {}, "amx.log")],
        "bench": [([python, "-m", "erbnn_ext", "bench", "--device", "cuda", "--quick", "--json", "--no-progress",
                    "--out", "{tmp}"], {}, "bench.json"),
                  ([python, "-m", "erbnn_ext.benchmarks.gpu", "--json", "{out}/gpu_figures.json"], {}, "bench.log")],
    }
    skipped = {s: "--skip" for s in args.skip}
    if not amx:
        skipped.setdefault("amx", "the CPU has no AMX (amx_tile/amx_int8 not in /proc/cpuinfo)")
    if sanitizer is None:
        skipped.setdefault("sanitizer", "compute-sanitizer not found (PATH, $CUDA_HOME/bin)")
    return archs, {k: v for k, v in steps.items() if k not in skipped}, skipped


def show(cmd, env):
    return shlex.join([f"{k}={v}" for k, v in env.items()] + cmd)


def run_step(cmds, out, tmp, timeout):
    """Run one step's commands in order; returns (ok, seconds). stdout+stderr to the step's logs, except
    a .json target, which gets stdout alone (its stderr goes to bench.log)."""
    start, ok = time.monotonic(), True
    for cmd, env, log in cmds:
        cmd = [c.replace("{tmp}", tmp).replace("{out}", out) for c in cmd]
        full_env = dict(os.environ, **env)
        left = max(1.0, timeout - (time.monotonic() - start))
        with open(os.path.join(out, log), "a") as f:
            err = open(os.path.join(out, "bench.log"), "a") if log.endswith(".json") else None
            if err is None:
                f.write(f"$ {show(cmd, env)}\n")
                f.flush()
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=full_env, stdout=f, stderr=err or subprocess.STDOUT,
                                    timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            finally:
                if err is not None:
                    err.close()
            if err is None:
                f.write(f"[exit status {rc}]\n")
        ok = ok and rc == 0
    return ok, time.monotonic() - start


def tail_line(path, pattern):
    try:
        with open(path) as f:
            hits = [line.strip() for line in f if re.search(pattern, line)]
    except OSError:
        return None
    return hits[-1] if hits else None


def summarise(out, results, total, info):
    res = {"gpu": info, "total_s": round(total, 1), "steps": {}}
    for name, (ok, sec) in results.items():
        res["steps"][name] = {"ok": ok, "seconds": round(sec, 1)}
    if "build" in results:
        res["steps"]["build"]["share_of_total"] = round(results["build"][1] / total, 3)
    res["steps"].get("tests", {})["result"] = tail_line(os.path.join(out, "tests.log"), r"\d+ (passed|failed)")
    res["steps"].get("amx", {})["result"] = tail_line(os.path.join(out, "amx.log"), r"\d+ (passed|failed)")
    if "sanitizer" in results:
        res["steps"]["sanitizer"]["result"] = tail_line(os.path.join(out, "sanitizer.log"), r"ERROR SUMMARY")
    lines = [f"gpu-check on {info['name']} (capability {info['capability']}, TORCH_CUDA_ARCH_LIST={info['archs']}, "
             f"torch {info['torch']}): {total:.0f} s"]
    for name, r in res["steps"].items():
        extra = f" ({100 * r['share_of_total']:.0f}% of the run)" if "share_of_total" in r else ""
        lines.append(f"  {name:9s} {'ok  ' if r['ok'] else 'FAIL'} {r['seconds']:6.1f} s{extra}"
                     + (f"  {r['result']}" if r.get("result") else ""))
    for name, why in info["skipped"].items():
        lines.append(f"  {name:9s} skipped: {why}")
    figures = os.path.join(out, "gpu_figures.json")
    if os.path.exists(figures):
        sys.path.insert(0, ROOT)
        from erbnn_ext.benchmarks.gpu import summary_lines

        with open(figures) as f:
            lines += ["  " + s for s in summary_lines(json.load(f))]
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(res, f, indent=1)
    return lines, all(ok for ok, _ in results.values())


def main(argv=None):
    args = parse_args(argv)
    python = os.environ.get("PYTHON") or shutil.which("python3") or sys.executable
    cuda_home = find_cuda_home()
    try:
        if args.capability is not None:
            name, capability, torch_version = "(planned)", args.capability, "(not imported)"
        else:
            name, capability, torch_version = detect_gpu()
        if cuda_home is None and not args.dry_run:
            raise Refusal("no CUDA toolkit: nvcc not found in $CUDA_HOME, on PATH or in /usr/local/cuda")
        missing = [] if args.dry_run or "build" in args.skip else build_tools_missing(python)
        if missing:
            raise Refusal(f"the build needs {', '.join(missing)} in {python}'s environment")
    except Refusal as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 3
    sanitizer = find_sanitizer(cuda_home)
    archs, steps, skipped = plan(args, python, capability, cuda_home, sanitizer, cpu_has_amx())
    out = os.path.abspath(args.out)
    if args.dry_run:
        print(f"gpu-check plan for {name}, capability {capability[0]}.{capability[1]}: "
              f"TORCH_CUDA_ARCH_LIST={archs}, MAX_JOBS={args.jobs}, python {python}, output {out}")
        for step, cmds in steps.items():
            for cmd, env, log in cmds:
                print(f"  [{step}] {show(cmd, env)}  > {log}")
        for step, why in skipped.items():
            print(f"  [{step}] skipped: {why}")
        return 0
    os.makedirs(out, exist_ok=True)
    for f in FILES:  # a rerun into the same folder starts its logs afresh
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    info = {"name": name, "capability": f"{capability[0]}.{capability[1]}", "archs": archs, "torch": torch_version,
            "jobs": args.jobs, "skipped": skipped}
    start, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory() as tmp:
        if "build" in steps:
            results["build"] = run_step(steps["build"], out, tmp, TIMEOUTS["build"])
            if not results["build"][0]:
                print(f"gpu-check: the build failed: see {out}/build.log", file=sys.stderr)
        if results.get("build", (True,))[0]:
            # GPU correctness (tests, sanitizer) and the CPU-only AMX work run side by side; the timed
            # benchmarks run afterwards, alone.
            parallel = [s for s in ("tests", "sanitizer", "amx") if s in steps]
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(parallel) or 1) as pool:
                futures = {s: pool.submit(run_step, steps[s], out, tmp, TIMEOUTS[s]) for s in parallel}
                results.update({s: f.result() for s, f in futures.items()})
            if "bench" in steps:
                results["bench"] = run_step(steps["bench"], out, tmp, TIMEOUTS["bench"])
    lines, ok = summarise(out, results, time.monotonic() - start, info)
    print("\n".join(lines))
    print(f"gpu-check: {'all steps passed' if ok else 'FAILED'}; logs and JSON in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
