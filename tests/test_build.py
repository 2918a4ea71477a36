"""setup.py and tools/build_backend.py: what a build compiles (CUDA only with a GPU or ERBNN_CUDA=1), its
parallelism and summary line, and `pip install .` leaving the clone alone. No compiling here."""
import json
import os
import subprocess
import sys

import pytest
import torch

import erbnn_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(erbnn_ext.__file__)))
NVCC = os.path.isfile("/usr/local/cuda/bin/nvcc")

# Loads setup.py with setuptools.setup replaced: the module's globals and setup()'s arguments, as JSON.
PROBE = r"""
import json, os, runpy, sys, setuptools
seen = {}
setuptools.setup = lambda **kw: seen.update(kw)
os.chdir(sys.argv[1])
g = runpy.run_path("setup.py")
ext = seen["ext_modules"][0] if seen["ext_modules"] else None
print(json.dumps({"cuda_home": g["CUDA_HOME"], "why": g["CUDA_WHY"], "max_jobs": os.environ.get("MAX_JOBS"),
                  "sources": ext.sources if ext else [], "cpu_isas": g["_cpu_isas"]()}))
"""


def probe(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("ERBNN_CUDA", "MAX_JOBS", "TORCH_CUDA_ARCH_LIST")}
    e.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE, ROOT], capture_output=True, text=True, env=e, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU default")
def test_no_gpu_builds_the_cpu_kernels_only_even_with_nvcc():
    got = probe(CUDA_HOME="/usr/local/cuda")
    assert got["cuda_home"] is None
    assert got["why"] == "CUDA skipped: no GPU visible; set ERBNN_CUDA=1 to build the CUDA kernels anyway"
    assert got["sources"] and not [s for s in got["sources"] if s.endswith(".cu")]


@pytest.mark.skipif(not NVCC, reason="needs nvcc at /usr/local/cuda")
def test_erbnn_cuda_1_builds_the_cuda_kernels():
    got = probe(CUDA_HOME="/usr/local/cuda", ERBNN_CUDA="1")
    assert got["cuda_home"] and got["why"] == "ERBNN_CUDA=1"
    assert [s for s in got["sources"] if s.endswith(".cu")]


def test_erbnn_cuda_0_and_bad_values():
    assert probe(ERBNN_CUDA="0")["why"] == "CUDA skipped: ERBNN_CUDA=0"
    e = dict(os.environ, ERBNN_CUDA="yes")
    proc = subprocess.run([sys.executable, "-c", PROBE, ROOT], capture_output=True, text=True, env=e, timeout=120)
    assert proc.returncode != 0 and "ERBNN_CUDA must be 0, 1 or unset; got 'yes'" in proc.stderr


def test_parallel_on_every_core_by_default():
    assert probe(ERBNN_CUDA="0")["max_jobs"] == str(len(os.sched_getaffinity(0)))
    assert probe(ERBNN_CUDA="0", MAX_JOBS="1")["max_jobs"] == "1"


def test_summary_lists_the_dispatched_isas():
    isas = probe(ERBNN_CUDA="0")["cpu_isas"]
    assert isas[0] == "avx2" and {"avx512f", "avx512vpopcntdq", "amx-int8"} <= set(isas)


def _tree_state():
    """{path: mtime_ns} of the clone's files, but for the environments, caches and git."""
    state = {}
    for base, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not (d.startswith(".venv") or d in (".git", "__pycache__", ".pytest_cache",
                                                                           ".benchmarks", ".hypothesis"))]
        for f in files:
            p = os.path.join(base, f)
            state[os.path.relpath(p, ROOT)] = os.stat(p).st_mtime_ns
    return state


def test_wheel_metadata_is_prepared_out_of_tree(tmp_path):
    """`pip install .` first asks the backend for the wheel's metadata, which runs setup.py: that must not
    touch the clone (no rewritten erbnn_ext/_build_info.py, no egg-info, nothing in build/). The metadata
    requires torch and numpy only; the rest sits behind extras."""
    before = _tree_state()
    code = ("import sys; sys.path.insert(0, 'tools'); import build_backend; "
            "print(build_backend.prepare_metadata_for_build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, ERBNN_CUDA="0"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree_state() == before
    dist_info = tmp_path / proc.stdout.strip().splitlines()[-1]
    requires = [l.split(":", 1)[1].strip() for l in (dist_info / "METADATA").read_text().splitlines()
                if l.startswith("Requires-Dist:")]
    plain = sorted(r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if ";" not in r)
    assert plain == ["numpy", "torch"], requires
    assert any(r.startswith("matplotlib") and 'extra == "bench"' in r for r in requires)
    assert any(r.startswith("scikit-learn") and 'extra == "train"' in r for r in requires)


def test_build_info_goes_beside_the_library(tmp_path):
    """_write_build_info writes into the folder it is given (the built library's), not the source tree."""
    code = r"""
import os, runpy, sys, setuptools
setuptools.setup = lambda **kw: None
os.chdir(sys.argv[1])
g = runpy.run_path("setup.py")
g["_write_build_info"](sys.argv[2], ["9.0"])
"""
    before = _tree_state()
    proc = subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path / "pkg")], capture_output=True, text=True,
                          env=dict(os.environ, ERBNN_CUDA="0"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree_state() == before
    ns = {}
    exec((tmp_path / "pkg" / "_build_info.py").read_text(), ns)
    assert ns["CUDA_ARCHS"] == ["9.0"] and ns["TORCH_VERSION"] == torch.__version__


def test_summary_counts_only_this_builds_objects(tmp_path):
    """The summary line counts the log entries this build added (told by content: ninja may rewrite its
    log), of this library's build.ninja, per rule."""
    (tmp_path / "build.ninja").write_text(
        "rule compile\nrule cuda_compile\n"
        f"build {tmp_path}/a.o: compile /src/a.cpp\nbuild {tmp_path}/b.cuda.o: cuda_compile /src/b.cu\n"
        f"build {tmp_path}/c.o: compile /src/c.cpp\n")
    old = f"0\t9000\t1\t{tmp_path}/a.o\th1\n"
    (tmp_path / ".ninja_log").write_text("# ninja log v5\n" + old)
    code = r"""
import json, os, runpy, sys, setuptools
setuptools.setup = lambda **kw: None
os.chdir(sys.argv[1])
g = runpy.run_path("setup.py")
before = g["_ninja_log"](sys.argv[2])
with open(os.path.join(sys.argv[2], ".ninja_log"), "w") as f:  # rewritten, then two new entries
    f.write("# ninja log v5\n" + sys.argv[3] + f"100\t2100\t2\t{sys.argv[2]}/b.cuda.o\th2\n"
            f"0\t1500\t2\t{sys.argv[2]}/c.o\th3\n5\t6\t2\t{sys.argv[2]}/other.o\th4\n")
times = g["_ninja_times"](sys.argv[2], before)
print(json.dumps(times))
print(g["_summary_line"]([("erbnn_ext._C", times, 3.2)], 3.4))
"""
    proc = subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path), old], capture_output=True, text=True,
                          env=dict(os.environ, ERBNN_CUDA="0"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    times, line = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(times) == {"compile": [1, 1.5], "cuda_compile": [1, 2.0]}
    assert line.startswith("erbnn_ext: built in 3 s with MAX_JOBS=")
    assert "_C in 3 s: 1 C++ object(s) (2 s of compiler time), 1 CUDA object(s) (2 s of compiler time)" in line
    assert line.endswith("CUDA skipped: ERBNN_CUDA=0.")


def test_the_loaded_library_has_its_build_record():
    """Wherever the library was built (in place, or in a wheel), its _build_info.py lies beside it and
    names this torch: an in-place build once left it in build/lib only (no CUDA archs, no torch check)."""
    if not erbnn_ext.native_available():
        pytest.skip(f"the native extension is not loaded: {erbnn_ext._native.LOAD_ERROR}")
    info = erbnn_ext._native._build_info
    assert info is not None and info.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]
    assert erbnn_ext.backend_info()["cuda_compiled"] == bool(info.CUDA_ARCHS)
