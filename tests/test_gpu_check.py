"""tools/gpu_check.sh (make gpu-check) and the GPU figures module, on a machine without a GPU: the refusal,
argument handling, the arch-list computation, the dry-run plan; the figures' code on tiny CPU shapes."""
import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")


def _load_tool():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "tools", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load_tool()


def run_script(*args, env=None, timeout=120):
    full = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", **(env or {}))
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_refuses_without_gpu(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this also holds on a GPU machine.
    start = time.monotonic()
    proc = run_script("--out", str(tmp_path / "o"))
    assert proc.returncode == 3, proc.stderr
    assert "no NVIDIA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60  # torch's import only; nothing is built
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments"),
    (["--jobs", "0"], "positive integer"),
    (["--dry-run", "--capability", "nine"], "capability must look like"),
    (["--capability", "9.0"], "--capability is for --dry-run"),
    (["--skip", "everything"], "invalid choice"),
])
def test_bad_arguments(args, message):
    proc = run_script(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("cap, archs", [((9, 0), "9.0"), ((8, 0), "8.0"), ((8, 6), "8.6"), ((7, 5), "7.5"),
                                        ((12, 0), "12.0")])
def test_arch_list_is_the_gpus_own(cap, archs):
    assert gpu_check.arch_list(cap) == archs


def test_defaults(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    a = gpu_check.parse_args([])
    assert (a.out, a.jobs, a.dry_run, a.skip) == ("gpu_out", os.cpu_count(), False, [])
    monkeypatch.setenv("OUT", "/tmp/somewhere")
    assert gpu_check.parse_args([]).out == "/tmp/somewhere"


def test_dry_run_plan_builds_nothing(tmp_path):
    before = {p: os.path.getmtime(p) for p in _built_libraries()}
    proc = run_script("--dry-run", "--capability", "8.6", "--jobs", "3", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "TORCH_CUDA_ARCH_LIST=8.6" in out and "MAX_JOBS=3" in out and "ERBNN_CUDA=1" in out
    assert "-m 'cuda or cuda_agreement'" in out
    assert "erbnn_ext.benchmarks.gpu" in out and "bench --device cuda --quick" in out
    for tool in ("memcheck", "racecheck", "synccheck"):
        assert f"--tool {tool}" in out or "[sanitizer] skipped" in out
    assert ("[amx] skipped" in out) != ("tests/test_conv_engines.py -k amx" in out)
    assert not (tmp_path / "o").exists()
    assert {p: os.path.getmtime(p) for p in _built_libraries()} == before


def _built_libraries():
    d = os.path.join(ROOT, "erbnn_ext")
    return [os.path.join(d, f) for f in os.listdir(d) if f.startswith("_C") and f.endswith(".so")]


def test_plan_skips_and_output_cap():
    a = gpu_check.parse_args(["--skip", "bench", "amx"])
    archs, steps, skipped = gpu_check.plan(a, "python3", (9, 0), "/usr/local/cuda", None, amx=True)
    assert archs == "9.0" and set(steps) == {"build", "tests"}
    assert skipped["bench"] == "--skip" and "compute-sanitizer" in skipped["sanitizer"]
    all_steps = gpu_check.plan(gpu_check.parse_args([]), "python3", (9, 0), "/c", "/c/bin/cs", amx=True)[1]
    logs = {log for cmds in all_steps.values() for _, _, log in cmds} | {"summary.json", "gpu_figures.json"}
    assert logs <= set(gpu_check.FILES) and len(gpu_check.FILES) <= 8


def test_gpu_figures_refuse_without_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "erbnn_ext.benchmarks.gpu", "--device", "cuda"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs an NVIDIA GPU" in proc.stderr, proc.stderr


def test_sanitizer_script_refuses_without_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "tools/sanitize_kernels.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_gpu_figures_code_path_on_cpu(native):
    from erbnn_ext.benchmarks import gpu

    res = gpu.run("cpu", min_time=0.01)
    assert res["copy_GB_s"] > 0 and res["batch"] == 2
    assert {r["op"] for r in res["memory_bound"]} == {"restore_activation", "restore_activation_fixed",
                                                      "approx_sign", "restore_weight"}
    assert {r["impl"] for r in res["conv"]} == {"binary_conv2d", "binary_conv2d_packed", "cudnn_bf16"}
    assert {r["impl"] for r in res["linear"]} == {"binary_linear", "cublas_bf16"}
    assert {r["impl"] for r in res["quantile"]} == {"erbnn.two_sided_quantile", "torch.kthvalue", "torch.quantile"}
    lines = gpu.summary_lines(res)
    assert lines[0].startswith("device:") and any(line.startswith("quantile n=1000") for line in lines)


@pytest.mark.cuda
def test_cuda_supported_on_this_gpu(native):
    from erbnn_ext import _native

    assert _native.cuda_supported(torch.device("cuda", 0)) is True
    assert _native.cuda_supported(0) is True  # cached per index


def test_build_prerequisites_found_in_this_environment():
    # the suite's own environment builds the extension: setuptools >= 77 and ninja are there
    assert gpu_check.build_tools_missing(sys.executable) == []


def test_sanitizer_script_calls_work_on_cpu(native):
    # The same op calls as under compute-sanitizer, on the CPU against itself: signatures and state set-up
    # are checked here, so that scarce GPU time is not spent on a broken script.
    proc = subprocess.run([sys.executable, "tools/sanitize_kernels.py", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "all kernels on cpu agree" in proc.stdout, proc.stdout + proc.stderr
