"""Build erbnn_ext: CPU kernels always; CUDA kernels when a GPU is visible or when asked (ERBNN_CUDA=1).

Environment:
  ERBNN_CUDA=1     build the CUDA sources (a missing nvcc is a build error); CI sets it.
  ERBNN_CUDA=0     skip them.
  unset            build them only when torch sees a GPU and nvcc is found: on a machine without a GPU
                   they could not run, and on 2 cores they double a first build's time. Never dropped
                   silently: the build's last line says what was compiled and what was skipped.
  CUDA_HOME        the CUDA toolkit; found from nvcc on PATH or /usr/local/cuda otherwise (torch's own
                   guess follows /usr/local/bin/nvcc to /usr/local, which is wrong on some machines).
  TORCH_CUDA_ARCH_LIST  default "8.0;9.0+PTX" (tools/gpu_check.sh sets the local GPU's only).
  MAX_JOBS         parallel compile jobs (default: every core this process may use).
  ERBNN_DEBUG=1    keep debug info (-g); by default it is dropped (-g0): it made the compile ~3x slower.
  ERBNN_CUDA_EMU=0 skip the CUDA emulation library (erbnn_ext._C_emu: csrc/cuda/*.cu compiled as C++
                   against csrc/cuda_emu, for the cuda_emu tests); =1 a missing C++20 compiler is an
                   error; unset: built whenever the C++ compiler handles C++20 (the build says when not).
  ERBNN_SKIP_EXT=1 no extension at all: `make build` registers the package with an editable install
                   this way and compiles in place with `setup.py build_ext --inplace` (ninja keeps the
                   objects in build/, so a rebuild recompiles only what changed). `pip install .`
                   builds in a copy of the tree (tools/build_backend.py): it never touches build/ nor
                   the in-place library and its erbnn_ext/_build_info.py.

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


def _gpu_visible():
    """Whether torch sees a CUDA device (imports torch, not torch.utils.cpp_extension)."""
    import torch

    return torch.version.cuda is not None and torch.cuda.device_count() > 0


def _cuda_decision():
    """(CUDA_HOME or None, why): whether this build compiles the CUDA sources, and the reason it gives."""
    want = os.environ.get("ERBNN_CUDA", "auto").strip().lower()
    if want not in ("0", "1", "auto", ""):
        sys.exit(f"ERBNN_CUDA must be 0, 1 or unset; got {want!r}")
    if want == "0":
        return None, "CUDA skipped: ERBNN_CUDA=0"
    home = _find_cuda_home()
    if want == "1":
        if home is None:
            sys.exit("ERBNN_CUDA=1 but no CUDA toolkit (bin/nvcc) was found: set CUDA_HOME")
        return home, "ERBNN_CUDA=1"
    if not _gpu_visible():
        return None, "CUDA skipped: no GPU visible; set ERBNN_CUDA=1 to build the CUDA kernels anyway"
    if home is None:
        return None, "CUDA skipped: a GPU is visible but no nvcc was found; set CUDA_HOME or ERBNN_CUDA=1"
    return home, "a GPU is visible"


CUDA_HOME, CUDA_WHY = _cuda_decision()
if CUDA_HOME:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import time.
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
# ninja's own default is cores + 2; say how many, so the summary line can report it.
os.environ.setdefault("MAX_JOBS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                      else os.cpu_count() or 1))


def _import_cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found, using CUDA_HOME=..."
    warning when this build skips CUDA on purpose (it would read as a problem in the build log)."""
    import importlib
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    if not CUDA_HOME:
        log.setLevel(logging.ERROR)
    try:
        return importlib.import_module("torch.utils.cpp_extension")
    finally:
        log.setLevel(level)


_cpp_extension = _import_cpp_extension()
BuildExtension, CppExtension, CUDAExtension = (_cpp_extension.BuildExtension, _cpp_extension.CppExtension,
                                               _cpp_extension.CUDAExtension)


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


def _cuda_archs():
    if not CUDA_HOME:
        return []
    return [a for a in os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";") if a]


def _write_build_info(package_dir, archs):
    """Record what this build compiled, for backend_info() (the .so cannot tell its CUDA archs), and the
    torch it is built against (erbnn_ext/_native.py refuses to load the .so under another torch). Written
    beside the library being built: erbnn_ext/ for an in-place build, the wheel's tree otherwise."""
    import torch

    os.makedirs(package_dir, exist_ok=True)
    with open(os.path.join(package_dir, "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"CUDA_ARCHS = {archs!r}\nCUDA_HOME = {CUDA_HOME!r}\nTORCH_VERSION = {torch.__version__!r}\n")


def _cpu_isas():
    """The instruction sets the CPU kernels are compiled for (besides the baseline), from their
    __attribute__((target(...))) annotations; the library picks one at run time (csrc/cpu/cpu_isa.h)."""
    import re

    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.[ch]*"), recursive=True)):
        with open(path, errors="replace") as f:
            for feats in re.findall(r'target\("([^"]+)"\)', f.read()):
                found += [x.strip() for x in feats.split(",")]
    return list(dict.fromkeys(sorted(found, key=lambda x: (not x.startswith("avx2"), x))))


def _ninja_times(build_temp, before):
    """{rule: (objects, compiler seconds)} of the objects ninja (re)built since its log held the lines
    `before` (a set: ninja may rewrite its log, so new entries are told by content, not position), for
    this library's build.ninja: "compile" is C++, "cuda_compile" CUDA."""
    rules = {}
    try:
        with open(os.path.join(build_temp, "build.ninja")) as f:
            for line in f:
                if line.startswith("build ") and ": " in line:
                    out, rest = line[6:].split(": ", 1)
                    rules[out.strip().replace("$:", ":")] = rest.split()[0]
        with open(os.path.join(build_temp, ".ninja_log")) as f:
            log = [line for line in f if line not in before]
    except OSError:
        return {}
    times = {}
    for line in log:
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4 or line.startswith("#"):
            continue
        rule = rules.get(parts[3]) or rules.get(os.path.join(build_temp, parts[3]))
        if rule in ("compile", "cuda_compile"):
            n, sec = times.get(rule, (0, 0.0))
            times[rule] = (n + 1, sec + (int(parts[1]) - int(parts[0])) / 1000)
    return times


def _ninja_log(build_temp):
    """The lines of ninja's log in build_temp (a set; empty before the first build)."""
    try:
        with open(os.path.join(build_temp, ".ninja_log")) as f:
            return set(f)
    except OSError:
        return set()


class _BuildExt(BuildExtension):
    """torch's BuildExtension (ninja), plus _build_info.py beside the library and a one-line summary of
    what was compiled per library, how long it took and what was skipped."""

    def build_extensions(self):
        import time

        self._built = []
        start = time.monotonic()
        super().build_extensions()
        print(_summary_line(self._built, time.monotonic() - start), flush=True)

    def build_extension(self, ext):
        import time

        before, start = _ninja_log(self.build_temp), time.monotonic()
        super().build_extension(ext)
        # torch writes one build.ninja per library into build_temp: read it before the next one's
        self._built.append((ext.name, _ninja_times(self.build_temp, before), time.monotonic() - start))
        if ext.name == "erbnn_ext._C":
            _write_build_info(os.path.dirname(self.get_ext_fullpath(ext.name)), _cuda_archs())

    def run(self):
        super().run()
        # An in-place build compiles into build/lib and copies only the libraries into the tree: the record
        # goes beside the in-place library too.
        if self.inplace and any(e.name == "erbnn_ext._C" for e in self.extensions):
            package = self.get_finalized_command("build_py").get_package_dir("erbnn_ext")
            _write_build_info(os.path.join(ROOT, package), _cuda_archs())


def _summary_line(built, wall):
    """built: [(library, {rule: (objects, compiler seconds)}, wall seconds)]."""
    libs = []
    for name, times, sec in built:
        parts = [f"{n} {label} object(s) ({t:.0f} s of compiler time)"
                 for rule, label in (("compile", "C++"), ("cuda_compile", "CUDA"))
                 for n, t in [times.get(rule, (0, 0.0))] if n]
        libs.append(f"{name.split('.')[-1]} in {sec:.0f} s: " + (", ".join(parts) or "up to date, relinked"))
    cuda = f"CUDA archs {';'.join(_cuda_archs())} ({CUDA_WHY})" if CUDA_HOME else CUDA_WHY
    return (f"erbnn_ext: built in {wall:.0f} s with MAX_JOBS={os.environ.get('MAX_JOBS')}; "
            + "; ".join(libs) + f". CPU: baseline + run-time dispatched {', '.join(_cpu_isas())}. {cuda}.")


def _cxx_flags():
    """The C++ flags (after Python's own CFLAGS, so they win).

    -g0: Python's CFLAGS often carry -g (pyenv and distribution builds); the debug info of torch's
    templates tripled the compile time of a source and made the library ~30 MB (ERBNN_DEBUG=1 keeps -g).
    -include quiet_intrinsics.h: silences GCC 12's warnings inside its own intrinsic headers, at their
    source (the header says why)."""
    flags = ["-O3", "-std=c++20", "-fopenmp", "-fvisibility=hidden"]
    if os.environ.get("ERBNN_DEBUG") != "1":
        flags.append("-g0")
    flags += ["-include", os.path.join(ROOT, "csrc", "cpu", "quiet_intrinsics.h")]
    return flags


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = _cxx_flags()
    macros = []
    # py_limited_api: torch adds -DPy_LIMITED_API and leaves out libtorch_python (csrc/module.cpp).
    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"], py_limited_api=True)
    if CUDA_HOME:
        print(f"erbnn_ext: building CUDA kernels with {CUDA_HOME} for "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} ({CUDA_WHY})")
        macros += [("ERBNN_WITH_CUDA", None)]
        common["include_dirs"] += _cuda_library_includes()
        # No --use_fast_math: it flushes denormals and approximates divisions that feed sign decisions,
        # so CUDA results could differ from the CPU's.
        # --fmad=false: no multiply-add the source does not write (fmaf / __fma_rn where it does), as the
        # CPU build and the emulator (-ffp-contract=off), so that statistics feeding signs (sums of squares,
        # the surrogate's 1 - t*t) round alike on both (docs/kernels.md, "The CUDA emulator").
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr", "--fmad=false"]
        return CUDAExtension(
            "erbnn_ext._C", sources + rel("csrc/cuda/*.cu"), define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    print(f"erbnn_ext: building the CPU kernels only ({CUDA_WHY})")
    return CppExtension("erbnn_ext._C", sources, define_macros=macros,
                        extra_compile_args={"cxx": cxx}, **common)


# ---- the CUDA emulation library (docs/kernels.md, "The CUDA emulator") ---------------------------------
_EMU_PROBE = """
#include <atomic>
#include <bit>
#include <ucontext.h>
int main() { int v = 0; std::atomic_ref<int>(v).fetch_add(1); ucontext_t c; getcontext(&c);
             return std::bit_cast<unsigned>(v) == 1u ? 0 : 1; }
"""


def _emu_compiler_ok():
    """Whether the C++ compiler builds the emulator's runtime (C++20 atomic_ref and bit_cast, ucontext)."""
    import subprocess
    import tempfile

    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(_EMU_PROBE)
        try:
            r = subprocess.run([cxx, "-std=c++20", "-fsyntax-only", src], capture_output=True, text=True)
        except OSError as exc:
            return f"{cxx}: {exc}"
    return None if r.returncode == 0 else f"{cxx} -std=c++20 failed: {r.stderr.strip()[:300]}"


def _emu_units():
    """One C++ unit per csrc/cuda/*.cu (each #includes its .cu: setuptools compiles .cu files with nvcc
    only), written to build/cuda_emu_units and rewritten only when they change. device_support.cu asks the
    CUDA runtime about real devices and launches nothing: it has no emulated twin."""
    out_dir = os.path.join("build", "cuda_emu_units")
    os.makedirs(os.path.join(ROOT, out_dir), exist_ok=True)
    units = []
    for cu in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        name = os.path.basename(cu)
        if name == "device_support.cu":
            continue
        unit = os.path.join(out_dir, name[:-3] + ".cpp")
        text = f'// Generated by setup.py: {name} compiled as C++ for the CUDA emulator.\n#include "cuda/{name}"\n'
        path = os.path.join(ROOT, unit)
        if not os.path.isfile(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
        units.append(unit)
    return units


def _emu_extension():
    """erbnn_ext._C_emu, or None (said in the build output) when it is skipped."""
    want = os.environ.get("ERBNN_CUDA_EMU", "auto").strip().lower()
    if want not in ("0", "1", "auto", ""):
        sys.exit(f"ERBNN_CUDA_EMU must be 0, 1 or unset; got {want!r}")
    if want == "0":
        print("erbnn_ext: NOT building the CUDA emulator erbnn_ext._C_emu (ERBNN_CUDA_EMU=0): the cuda_emu tests skip")
        return None
    problem = _emu_compiler_ok()
    if problem:
        if want == "1":
            sys.exit(f"ERBNN_CUDA_EMU=1 but the C++ compiler cannot build the emulator: {problem}")
        print(f"erbnn_ext: NOT building the CUDA emulator erbnn_ext._C_emu (no C++20 compiler: {problem}): "
              "the cuda_emu tests skip")
        return None
    print("erbnn_ext: building the CUDA emulator erbnn_ext._C_emu (csrc/cuda as C++ on csrc/cuda_emu)")
    runtime = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda_emu", "*.cpp")))
    # -O1: the kernels run on small test shapes, the build time matters more. -ffp-contract=off: no fused
    # multiply-add the source does not write (docs/kernels.md: what the emulator vouches for).
    cxx = ["-O1", "-g0", "-std=c++20", "-ffp-contract=off", "-fvisibility=hidden", "-Wno-unknown-pragmas"]
    return CppExtension(
        "erbnn_ext._C_emu", runtime + _emu_units(), define_macros=[("ERBNN_CUDA_EMU", None)],
        include_dirs=[os.path.join(ROOT, "csrc", "cuda_emu", "shim"), os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, py_limited_api=True)


def _ext_modules():
    if os.environ.get("ERBNN_SKIP_EXT") == "1":
        return []
    emu = _emu_extension()
    return [_extension()] + ([emu] if emu else [])


setup(
    name="erbnn-ext",
    version=_version(),
    packages=find_packages(include=["erbnn_ext", "erbnn_ext.*"]),
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": _BuildExt.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
