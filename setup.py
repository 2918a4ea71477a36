"""Build erbnn_ext: CPU kernels always, CUDA kernels whenever nvcc is found.

Environment:
  ERBNN_CUDA=0     skip the CUDA sources;  ERBNN_CUDA=1  a missing nvcc is a build error;
                   unset: build them when nvcc is found (never dropped silently: the build says so).
  CUDA_HOME        the CUDA toolkit; found from nvcc on PATH or /usr/local/cuda otherwise (torch's own
                   guess follows /usr/local/bin/nvcc to /usr/local, which is wrong on some machines).
  TORCH_CUDA_ARCH_LIST  default "8.0;9.0+PTX" (tools/gpu_check.sh sets the local GPU's only).
  MAX_JOBS         parallel compile jobs (ninja).
  ERBNN_SKIP_EXT=1 no extension at all: `make build` registers the package with an editable install
                   this way and compiles in place with `setup.py build_ext --inplace` (ninja keeps the
                   objects in build/, so a rebuild recompiles only what changed).

The library is built against the installed torch (its C++ ABI: rebuild after changing torch) and the
stable CPython ABI (py_limited_api: one build serves every CPython >= 3.10); it has no pybind11 module.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """A CUDA root that really holds bin/nvcc, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isdir(os.path.join(c, "include")):
            return os.path.realpath(c)
    return None


_want_cuda = os.environ.get("ERBNN_CUDA", "auto").strip().lower()
if _want_cuda not in ("0", "1", "auto", ""):
    sys.exit(f"ERBNN_CUDA must be 0, 1 or unset; got {_want_cuda!r}")
CUDA_HOME = None if _want_cuda == "0" else _find_cuda_home()
if _want_cuda == "1" and CUDA_HOME is None:
    sys.exit("ERBNN_CUDA=1 but no CUDA toolkit (bin/nvcc) was found: set CUDA_HOME")
if CUDA_HOME:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import time.
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _version():
    ns = {}
    with open(os.path.join(ROOT, "erbnn_ext", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def _cuda_library_includes():
    """Headers of CUDA libraries that torch's CUDA headers include (cusparse.h, cublas_v2.h, ...).

    A bare toolkit (nvcc + runtime only) lacks them; torch's pip wheels ship them in the nvidia-*
    packages beside torch, so use those when the toolkit has none."""
    if os.path.isfile(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    found = []
    for base in sys.path:
        for hdr in sorted(glob.glob(os.path.join(base, "nvidia", "*", "include", "cusparse.h"))):
            found.append(os.path.dirname(hdr))
    if not found:
        print("erbnn_ext: warning: cusparse.h not found in CUDA_HOME nor in nvidia-* wheels")
    return found[:1]


def _write_build_info(archs):
    """Record what this build compiled, for backend_info() (the .so cannot tell its CUDA archs), and the
    torch it is built against (erbnn_ext/_native.py refuses to load the .so under another torch)."""
    import torch

    with open(os.path.join(ROOT, "erbnn_ext", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"CUDA_ARCHS = {archs!r}\nCUDA_HOME = {CUDA_HOME!r}\nTORCH_VERSION = {torch.__version__!r}\n")


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fvisibility=hidden"]
    macros = []
    # py_limited_api: torch adds -DPy_LIMITED_API and leaves out libtorch_python (csrc/module.cpp).
    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"], py_limited_api=True)
    if CUDA_HOME:
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        _write_build_info([a for a in archs.replace(" ", ";").split(";") if a])
        print(f"erbnn_ext: building CUDA kernels with {CUDA_HOME} for TORCH_CUDA_ARCH_LIST={archs}")
        macros += [("ERBNN_WITH_CUDA", None)]
        common["include_dirs"] += _cuda_library_includes()
        # No --use_fast_math: it flushes denormals and approximates divisions that feed sign decisions,
        # so CUDA results could differ from the CPU's.
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "erbnn_ext._C", sources + rel("csrc/cuda/*.cu"), define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    _write_build_info([])
    print("erbnn_ext: building WITHOUT CUDA kernels "
          + ("(ERBNN_CUDA=0)" if _want_cuda == "0" else "(no nvcc found; set CUDA_HOME or ERBNN_CUDA=1)"))
    return CppExtension("erbnn_ext._C", sources, define_macros=macros,
                        extra_compile_args={"cxx": cxx}, **common)


setup(
    name="erbnn-ext",
    version=_version(),
    packages=find_packages(include=["erbnn_ext", "erbnn_ext.*"]),
    ext_modules=[] if os.environ.get("ERBNN_SKIP_EXT") == "1" else [_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
