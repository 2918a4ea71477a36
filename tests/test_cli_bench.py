"""`erbnn bench` end to end (subprocess, --quick) and its argument errors. No timing asserts."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import erbnn_ext
from erbnn_ext.benchmarks import binary_conv as conv, overhead, train_step
from erbnn_ext.benchmarks.shapes import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(erbnn_ext.__file__)))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """In-process commands set torch's thread count (--threads): restore it for the tests after them."""
    import torch
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "erbnn_ext", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # one thread: the CI machine has 2 cores shared with other jobs, and oversubscribed OpenMP crawls
    # a generous limit: on a loaded machine the whole quick run takes minutes (a limit, not a timing)
    proc = run_cli("--quick", "--threads", "1", "--no-progress", "--json", "--out", str(out), timeout=900)
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
                    if mode not in overhead.ER_ONLY_MODES or method.startswith("erbnn"):
                        want.add(("overhead", model, shape.name, mode, method))
            for method in conv.METHODS:
                want.add(("conv", model, shape.name, "", method))
            for method in train_step.LAYER_METHODS:
                want.add(("train_step", model, shape.name, "", method))
        for method in train_step.MODEL_METHODS:
            want.add(("train_step", model, "(model)", "", method))
    got = [(r["section"], r["model"], r["layer"], r.get("mode", ""), r["method"]) for r in rows]
    assert len(got) == len(set(got))
    assert set(got) == want
    for r in rows:
        assert r["time_s"] > 0 and r["calls"] == 2 and r["batch"] == 2 and r["backend"]
        assert r["threads"] == 1
    assert result["config"]["quick"] and result["config"]["smoke"]
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
    if "native" in bconv:  # each CPU binary conv row names the engine auto chose for it, and why
        engines = erbnn_ext.backend_info()["conv_engines"]
        for r in rows:
            if r["method"] == "binary_conv2d":
                assert r["engine"] in engines and r["engine_why"], r
        from erbnn_ext.benchmarks import report
        assert "CPU conv engine per layer" in report.render_text(json.loads((out / "bench.json").read_text()))


def test_quick_run_writes_png_and_tables(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # with --json the tables go to stderr
    for text in ("Machine:", "Restoration overhead per model", "reduction vs IR-Net", "Binary conv per model",
                 "Training step per binary layer", "Training step per model", "SMOKE RUN"):
        assert text in proc.stderr


def test_quick_run_prints_no_reductions_or_ratios(quick_run):
    """Two calls per case cannot support a reduction or a speed-up: a smoke run shows 'smoke' instead,
    while the paper's claims stay visible."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.findall(r"\d+\.\d+x\b", proc.stderr) == []  # no speed-up or ratio cell
    assert set(re.findall(r"-?\d+\.\d%", proc.stderr)) == {"60.0%", "67.0%"}  # only the paper's claims
    erbnn = [l for l in proc.stderr.splitlines() if "ER-BNN native" in l and " fwd " in l]
    assert erbnn and all("smoke" in l for l in erbnn), erbnn
    assert "geometric mean" not in proc.stderr


def test_train_step_summary_and_float_twin(quick_run):
    proc, out = quick_run
    s = json.loads((out / "bench.json").read_text())["summary"]["train_step"]
    assert {(e["model"], e["layer"]) for e in s["layers"]} == {
        (m, sh.name) for m in ("resnet18", "resnet20") for sh in MODELS[m]}
    assert {e["model"] for e in s["models"]} == {"resnet18", "resnet20"}
    for e in s["layers"] + s["models"]:
        assert e["ratio"] > 0
    gm = math.exp(sum(math.log(e["ratio"]) for e in s["layers"]) / len(s["layers"]))
    assert s["layer_ratio_geomean"] == pytest.approx(gm)


def test_float_twin_replaces_every_er_layer_with_the_same_weights():
    import torch

    from erbnn_ext.models import resnet20_1w1a
    from erbnn_ext.nn import ERBinaryConv2d, ERBinaryLinear
    model = resnet20_1w1a()
    twin = train_step.float_twin(model)
    assert not any(isinstance(m, (ERBinaryConv2d, ERBinaryLinear)) for m in twin.modules())
    assert any(isinstance(m, ERBinaryConv2d) for m in model.modules())  # the original is untouched
    er = dict(model.named_modules())
    n = 0
    for name, m in twin.named_modules():
        if isinstance(er[name], (ERBinaryConv2d, ERBinaryLinear)):
            assert type(m) in (torch.nn.Conv2d, torch.nn.Linear) and m.training == er[name].training
            assert torch.equal(m.weight, er[name].weight) and m.weight is not er[name].weight
            if isinstance(m, torch.nn.Conv2d):
                assert (m.stride, m.padding, m.kernel_size) == (er[name].stride, er[name].padding,
                                                                er[name].kernel_size)
            n += 1
    assert n == sum(isinstance(m, (ERBinaryConv2d, ERBinaryLinear)) for m in model.modules()) > 0
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(twin.eval()(x), train_step.float_twin(model).eval()(x), rtol=0, atol=0)


def test_train_step_module_runs_standalone(capsys):
    train_step.main(["--models", "resnet20", "--batch", "2", "--threads", "1", "--min-time", "0.01",
                     "--no-models", "--clock", "thread"])
    out = capsys.readouterr().out
    assert "clock: thread" in out and "ER layers ran: " in out
    assert "Machine:" in out and "load average" in out and "geometric mean of the per-layer ratios" in out
    assert out.count("resnet20 ") == len(MODELS["resnet20"])


def test_train_step_float_conv_flag_restores_the_default(capsys, monkeypatch):
    """--float-conv times the ER layers with F.conv2d as their forward (the restoration's own cost): the
    steps it builds must take that path, and the class default comes back afterwards."""
    seen = []
    real = train_step.layer_step

    def spy(shape, batch, method="er_layer", *a, **k):
        step = real(shape, batch, method, *a, **k)
        if method == "er_layer":  # does the ER layer's forward conv run the popcount kernel?
            seen.append(step.route.kernel != "float")
        return step
    monkeypatch.setattr(train_step, "layer_step", spy)
    train_step.main(["--models", "resnet20", "--batch", "2", "--threads", "1", "--min-time", "0.01",
                     "--no-models", "--float-conv"])
    assert "forward conv: F.conv2d" in capsys.readouterr().out
    assert seen and not any(seen)
    assert _fresh_route().kernel == "er_step"


def _fresh_route(cin=16):
    """The route of a new ER layer's training step: the defaults, once no benchmark overrides them."""
    from erbnn_ext.nn import ERBinaryConv2d, route
    return route(ERBinaryConv2d(cin, 8, 3).train(), torch.randn(2, cin, 6, 6, requires_grad=True))


@pytest.mark.parametrize("flag, expected", [("on", True), ("off", False)])
def test_train_step_nhwc_flag_restores_the_default(capsys, monkeypatch, flag, expected):
    """--nhwc on/off forces the ER step's order (ERBinaryConv2d.nhwc_train) while the steps run, and the
    class default (None: the measured rule) comes back afterwards."""
    from erbnn_ext.nn import routing
    seen = []
    real = train_step.layer_step

    def spy(shape, batch, method="er_layer", *a, **k):
        step = real(shape, batch, method, *a, **k)
        return lambda: (seen.append(routing._OVERRIDE["nhwc_train"]), step())[1]
    monkeypatch.setattr(train_step, "layer_step", spy)
    train_step.main(["--models", "resnet20", "--batch", "2", "--threads", "1", "--min-time", "0.01",
                     "--no-models", "--nhwc", flag])
    assert f"NHWC step: {flag}" in capsys.readouterr().out
    assert seen and all(v is expected for v in seen)
    assert routing._OVERRIDE["nhwc_train"] is None


def test_thread_clock_needs_one_thread(tmp_path, capsys):
    from erbnn_ext.cli import main
    assert main(["bench", "--clock", "thread", "--threads", "2", "--quick", "--out", str(tmp_path)]) == 2
    assert "--clock thread measures one thread: pass --threads 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="one thread"):
        from erbnn_ext.benchmarks.timing import measure
        measure(lambda: None, threads=2, clock="thread")


def test_side_by_side_rotates_the_order_and_pairs_the_rounds(monkeypatch):
    """measure_side_by_side runs its fns in a rotated order each round and keeps each round's time;
    paired_ratio is the median of the per-round ratios (a slow round slows both), else time_s / time_s."""
    from erbnn_ext.benchmarks import timing
    order, clock = [], iter([1.0, 2.0, 10.0, 20.0, 3.0, 6.0, 40.0, 2.0])  # rounds: (a, b), (b, a), (a, b), (b, a)

    def fake_measure(fn, **kw):
        order.append(fn)
        return {"time_s": next(clock), "calls": 1}

    monkeypatch.setattr(timing, "measure", fake_measure)
    a, b = timing.measure_side_by_side(["a", "b"], rounds=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert a["round_s"] == [1.0, 20.0, 3.0, 2.0] and b["round_s"] == [2.0, 10.0, 6.0, 40.0]
    assert a["time_s"] == 3.0 and b["time_s"] == 10.0  # medians (upper) of the rounds
    assert timing.paired_ratio(a, b) == pytest.approx(0.5)  # ratios 0.5, 2, 0.5, 0.05
    assert timing.paired_ratio({"time_s": 3.0}, {"time_s": 2.0}) == 1.5


def test_model_short_names():
    from erbnn_ext.benchmarks.cli import _models
    assert _models("resnet20_1w1a,resnet18") == ["resnet20", "resnet18"]


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


def test_a_few_repeats_are_a_smoke_run_too(tmp_path):
    proc = run_cli("--repeat", "2", "--threads", "1", "--no-progress", "--models", "resnet20", "--sections", "conv",
                   "--batch", "2", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SMOKE RUN (2 calls per case, batch 2" in proc.stdout
    assert json.loads((tmp_path / "bench.json").read_text())["config"]["smoke"] is True


# ---- reporting as it goes: tables per section, bench.json after every case, progress lines ----------------

def _popen_bench(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "erbnn_ext", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_run_keeps_the_finished_sections(tmp_path, sig):
    """Killed while its second section runs (once the first progress line of train_step is out): the first
    section's table is already on stdout, and bench.json holds its rows, marked incomplete."""
    import signal

    proc = _popen_bench("--quick", "--threads", "1", "--models", "resnet20", "--sections", "conv,train_step",
                        "--out", str(tmp_path))
    lines = []
    try:
        for line in proc.stderr:  # not a terminal: one progress line per case
            lines.append(line)
            if line.startswith("erbnn bench: train_step 1/"):
                proc.send_signal(getattr(signal, sig))
                break
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert any(l.startswith("erbnn bench: train_step 1/") for l in lines), "".join(lines)[-3000:]
    assert any(re.match(r"erbnn bench: conv \d+/\d+ resnet20 \S+ binary_conv2d: [\d,.]+ us", l) for l in lines)
    assert proc.returncode == (143 if sig == "SIGTERM" else -signal.SIGKILL)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["complete"] is False and result["sections_done"] == ["conv"]
    conv_rows = [r for r in result["rows"] if r["section"] == "conv"]
    assert {(r["layer"], r["method"]) for r in conv_rows} == {
        (sh.name, m) for sh in MODELS["resnet20"] for m in conv.METHODS}
    assert {e["model"] for e in result["summary"]["conv"]} == {"resnet20"}
    assert result["summary"]["train_step"]["layers"] == []  # an unfinished section is not summarised
    assert not (tmp_path / "bench.png").exists()
    if sig == "SIGTERM":
        assert result["stopped"] == "interrupted (SIGTERM)"
        assert "marked incomplete" in err and "Traceback" not in err
        # no temporary file left behind (a SIGKILL during a rewrite may leave one: bench.json stays whole)
        assert not [p for p in os.listdir(tmp_path) if p != "bench.json"]


def test_a_crash_keeps_what_was_measured(tmp_path, monkeypatch, capsys):
    """An exception in the second section: the error propagates, bench.json keeps the first section and the
    cases of the second measured before it, marked incomplete with the error; the first table was printed."""
    from erbnn_ext.benchmarks import run
    from erbnn_ext.cli import main

    real = run._CASES["train_step"]

    def failing(*a, **k):
        for i, case in enumerate(real(*a, **k)):
            if i == 2:
                row, _ = case

                def boom():
                    raise RuntimeError("kernel exploded")
                yield row, boom
            else:
                yield case
    monkeypatch.setitem(run._CASES, "train_step", failing)
    with pytest.raises(RuntimeError, match="kernel exploded"):
        main(["bench", "--quick", "--threads", "1", "--no-progress", "--models", "resnet20",
              "--sections", "conv,train_step", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert "Binary conv per model" in captured.out and "Training step per" not in captured.out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["complete"] is False and result["sections_done"] == ["conv"]
    assert result["stopped"] == "stopped by an error: RuntimeError: kernel exploded"
    assert len([r for r in result["rows"] if r["section"] == "train_step"]) == 2  # the pair before the failure


def test_a_finished_run_is_complete_and_prints_each_section_once(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert result["complete"] is True and result["sections_done"] == ["overhead", "conv", "train_step"]
    assert set(result["section_time_s"]) == {"overhead", "conv", "train_step"}
    assert "stopped" not in result
    for title in ("Restoration overhead per model", "Binary conv per model", "Training step per model"):
        assert proc.stderr.count(title) == 1
    # the tables come out in section order, after the machine line
    pos = [proc.stderr.index(t) for t in ("Machine:", "Restoration overhead per model", "Binary conv per model",
                                          "Training step per model")]
    assert pos == sorted(pos)
    assert "erbnn bench: conv 1/" not in proc.stderr  # --no-progress: no progress lines


def test_write_json_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous bench.json whole (and no temporary file)."""
    from erbnn_ext.benchmarks import report
    path = tmp_path / "bench.json"
    report.write_json({"rows": [1]}, str(path))

    def broken_dump(obj, f, **kw):
        f.write('{"rows": [')
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(report.json, "dump", broken_dump)
    with pytest.raises(OSError):
        report.write_json({"rows": [1, 2]}, str(path))
    assert json.loads(path.read_text()) == {"rows": [1]}
    assert os.listdir(tmp_path) == ["bench.json"]


def test_help_documents_sections_and_models():
    from erbnn_ext.cli import build_parser
    text = build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    for section in ("overhead", "conv", "train_step"):
        assert re.search(section + r" \(~\d+(\.\d+)? min", " ".join(text.split())), text
    for model in MODELS:
        assert model in text


def _conv_dtypes(fn):
    """The dtypes of the float convolutions (forward and backward) fn() runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
                seen.add((func.overloadpacket.__name__, args[0].dtype))
            return func(*args, **(kwargs or {}))
    with Spy():
        fn()
    return seen


@pytest.mark.parametrize("method", train_step.LAYER_METHODS)
def test_train_step_amp_runs_the_layer_steps_float_convs_in_bf16(method):
    shape = MODELS["resnet20"][1]
    seen = _conv_dtypes(train_step.layer_step(shape, 2, method, amp="bf16"))
    assert ("convolution_backward", torch.bfloat16) in seen, seen
    assert all(dt == torch.bfloat16 for _, dt in seen), seen
    assert all(dt == torch.float32 for _, dt in _conv_dtypes(train_step.layer_step(shape, 2, method))), method


@pytest.mark.parametrize("method", train_step.MODEL_METHODS)
def test_train_step_amp_runs_the_model_steps_float_convs_in_bf16(method):
    seen = _conv_dtypes(train_step.model_step("resnet20", 2, method, amp="bf16"))
    assert seen and all(dt == torch.bfloat16 for _, dt in seen), seen


def test_train_step_amp_flag(capsys):
    train_step.main(["--models", "resnet20", "--batch", "2", "--threads", "1", "--min-time", "0.01",
                     "--no-models", "--clock", "thread", "--amp", "bf16"])
    out = capsys.readouterr().out
    assert "autocast: bf16" in out and "[under autocast bf16]" in out
    with pytest.raises(ValueError, match="amp must be"):
        train_step.autocast("cpu", "int8")


def test_frozen_benchmark_times_the_bf16_twin_beside_fp32(capsys):
    from erbnn_ext.benchmarks import frozen
    frozen.main(["--models", "resnet20_1w1a", "--batches", "1", "--min-run-time", "0.01", "--no-layers",
                 "--clock", "thread"])
    out = capsys.readouterr().out
    head, row = out.strip().splitlines()[-2:]
    assert head.split()[2:] == ["frozen", "float32", "bf16", "vs", "fp32", "vs", "bf16"], head
    name, batch, *vals = row.split()
    assert (name, batch) == ("resnet20_1w1a", "1") and len(vals) == 5 and all(float(v.rstrip("x")) > 0 for v in vals)
