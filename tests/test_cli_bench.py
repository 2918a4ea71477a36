"""`erbnn bench` end to end (subprocess, --quick) and its argument errors. No timing asserts."""
import json
import os
import subprocess
import sys

import pytest

import erbnn_ext
from erbnn_ext.benchmarks import conv, overhead
from erbnn_ext.benchmarks.shapes import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(erbnn_ext.__file__)))


def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "erbnn_ext", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # one thread: the CI machine has 2 cores shared with other jobs, and oversubscribed OpenMP crawls
    proc = run_cli("--quick", "--threads", "1", "--no-progress", "--json", "--out", str(out))
    return proc, out


def test_quick_run_succeeds(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quick_run_writes_every_row(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert json.loads(proc.stdout) == result  # --json prints the same document
    assert result["config"]["models"] == ["resnet18", "resnet20"]
    rows = result["rows"]
    want = set()
    for model in ("resnet18", "resnet20"):
        for shape in MODELS[model]:
            for mode in overhead.MODES:
                for method in overhead.METHODS:
                    if mode not in overhead.ERBNN_ONLY_MODES or method.startswith("erbnn"):
                        want.add(("overhead", model, shape.name, mode, method))
            for method in conv.METHODS:
                want.add(("conv", model, shape.name, "", method))
    got = [(r["section"], r["model"], r["layer"], r.get("mode", ""), r["method"]) for r in rows]
    assert len(got) == len(set(got))
    assert set(got) == want
    for r in rows:
        assert r["time_s"] > 0 and r["calls"] == 2 and r["batch"] == 2 and r["backend"]
    m = result["machine"]
    for key in ("cpu", "cpu_isa", "threads", "torch", "device"):
        assert key in m
    assert m["threads"] == 1 and m["device"] == "cpu"
    # a summary entry per model x mode x method, with the reduction against IR-Net
    s = result["summary"]["overhead"]
    assert {(e["model"], e["mode"], e["method"]) for e in s if e["mode"] == "train"} == {
        (mo, "train", me) for mo in ("resnet18", "resnet20") for me in overhead.METHODS}
    for e in s:
        if e["mode"] == "fwd" and e["method"] == "erbnn_native":
            assert e["reduction_vs_irnet_pct"] is not None
            assert e["paper_reduction_pct"] == {"resnet18": 60.0, "resnet20": 67.0}[e["model"]]


def test_quick_run_labels_backends(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    bconv = {r["backend"] for r in rows if r["method"] == "binary_conv2d"}
    assert bconv == {conv.binary_backend("cpu")}
    assert ("native" in bconv) == erbnn_ext.ops.has_kernel("binary_conv2d", "cpu")
    assert {r["backend"] for r in rows if r["method"] == "erbnn_reference"} == {"reference"}


def test_quick_run_writes_png_and_tables(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # with --json the tables go to stderr
    for text in ("Machine:", "Restoration overhead per model", "reduction vs IR-Net", "Binary conv per model"):
        assert text in proc.stderr


BAD_ARGS = [
    (["--batch", "0"], "positive integer"),
    (["--batch", "two"], "positive integer"),
    (["--repeat", "-1"], "positive integer"),
    (["--threads", "0"], "positive integer"),
    (["--models", "resnet50"], "unknown model"),
    (["--models", ""], "unknown model"),
    (["--sections", "gpu"], "unknown section"),
    (["--device", "tpu"], "invalid choice"),
    (["--min-time", "nan"], "positive number"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args, message", BAD_ARGS)
def test_bad_arguments_in_process(args, message, capsys):
    from erbnn_ext.cli import main
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [BAD_ARGS[0], BAD_ARGS[4]])
def test_bad_arguments_subprocess(args, message):
    proc = run_cli(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    proc = run_cli("--device", "cuda", "--quick", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "--device cuda" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bench.json").exists()


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("--quick", "--threads", "1", "--no-progress", "--models", "resnet20", "--sections", "conv",
                   "--out", str(blocker / "sub"), timeout=60)
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "cannot create" in proc.stderr and "Traceback" not in proc.stderr


def test_load_warning():
    from erbnn_ext.benchmarks.machine import load_warning
    assert load_warning({"cpu_count": 2, "load_avg_start": 0.5, "load_avg_end": 1.9}) is None
    assert "unreliable" in load_warning({"cpu_count": 2, "load_avg_start": 0.5, "load_avg_end": 6.4})
    assert load_warning({"cpu_count": 2, "load_avg_start": None}) is None
