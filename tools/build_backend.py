"""PEP 517 backend: setuptools, with the build's torch pinned to the torch of the target environment.

The extension links against torch's C++ ABI, so it must be built against the torch it will run with. In
an isolated build (`pip install .`) pip would otherwise install the newest allowed torch into the build
environment, whatever torch the target environment has. When the environment being installed into
already has a supported torch, this backend asks for exactly that version; otherwise for the supported
range (and pip then installs the same newest release as a runtime dependency). `pip install
--no-build-isolation .` skips all this and builds against the installed torch directly.

A wheel (`pip install .`) is built out of tree, in a temporary copy of the sources: the clone's build/
objects, its in-place library and erbnn_ext/_build_info.py stay as `make build` left them (the wheel's
build info describes the wheel's library, the in-place one describes the in-place library).
"""
import contextlib
import os
import shutil
import sysconfig
import tempfile
from importlib import metadata

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not overridden here)

TORCH_RANGE = ">=2.11,<2.15"  # keep in step with pyproject.toml's dependencies and README


def _target_torch():
    """The torch version installed where pip installs (sys.prefix's site-packages), or None. Pip's
    isolated build hides that site-packages from sys.path but runs the same interpreter and prefix."""
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    for dist in metadata.distributions(path=sorted(paths)):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return dist.version
    return None


def torch_requirement():
    version = _target_torch()
    return f"torch=={version}" if version else f"torch{TORCH_RANGE}"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a copy of the tree leaves behind: build outputs, environments, the in-place library and its record.
_NOT_COPIED = shutil.ignore_patterns(".git", "build", "dist", ".venv*", "*.egg-info", "__pycache__", "*.so",
                                     "_build_info.py", ".pytest_cache", ".benchmarks", "erbnn_out", "runs",
                                     "gpu_out")


@contextlib.contextmanager
def _out_of_tree():
    """A temporary copy of the sources as the working directory (setuptools builds in the cwd)."""
    with tempfile.TemporaryDirectory(prefix="erbnn-ext-build-") as tmp:
        src = os.path.join(tmp, "src")
        shutil.copytree(ROOT, src, ignore=_NOT_COPIED, symlinks=True)
        old = os.getcwd()
        os.chdir(src)
        try:
            yield
        finally:
            os.chdir(old)


def _abs(path):
    return os.path.abspath(path) if path else path


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    metadata_directory = _abs(metadata_directory)
    with _out_of_tree():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wheel_directory, metadata_directory = _abs(wheel_directory), _abs(metadata_directory)
    # The CUDA emulator is a test tool of this repository (make test, CI): a wheel leaves it out unless
    # ERBNN_CUDA_EMU=1 asks for it.
    os.environ.setdefault("ERBNN_CUDA_EMU", "0")
    with _out_of_tree():
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


# setuptools' own hooks would run setup.py, which imports torch: not installed yet at this point.
def get_requires_for_build_wheel(config_settings=None):
    return ["wheel", "ninja", torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    return []


__all__ = [n for n in dir(_setuptools) if not n.startswith("_")] + ["torch_requirement"]
