"""PEP 517 backend: setuptools, with the build's torch pinned to the torch of the target environment.

The extension links against torch's C++ ABI, so it must be built against the torch it will run with. In
an isolated build (`pip install .`) pip would otherwise install the newest allowed torch into the build
environment, whatever torch the target environment has. When the environment being installed into
already has a supported torch, this backend asks for exactly that version; otherwise for the supported
range (and pip then installs the same newest release as a runtime dependency). `pip install
--no-build-isolation .` skips all this and builds against the installed torch directly.
"""
import sysconfig
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


# setuptools' own hooks would run setup.py, which imports torch: not installed yet at this point.
def get_requires_for_build_wheel(config_settings=None):
    return ["wheel", "ninja", torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    return []


__all__ = [n for n in dir(_setuptools) if not n.startswith("_")] + ["torch_requirement"]
