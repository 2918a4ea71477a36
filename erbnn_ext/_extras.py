"""The optional dependencies of the CLI (pyproject's extras): a backend library needs torch and numpy only.

bench: tqdm (progress bars), matplotlib (bench.png); train: those and scikit-learn (the embedded digits
data set); all: everything. A feature that needs a missing one says which extra installs it."""
import importlib

# module -> (the package pip installs, the extra that brings it)
OPTIONAL = {"tqdm": ("tqdm", "bench"), "matplotlib": ("matplotlib", "bench"), "sklearn": ("scikit-learn", "train")}


class MissingExtraError(ImportError):
    """An optional dependency that a feature needs is not installed; the message names the extra."""


def install_hint(module: str, extra: str = None) -> str:
    """How to install `module`: through `extra` (default: the extra listed in OPTIONAL)."""
    package, default = OPTIONAL[module.split(".")[0]]
    extra = extra or default
    return f"pip install 'erbnn-ext[{extra}]' (or {package} alone, or erbnn-ext[all])"


def require(module: str, feature: str, extra: str = None):
    """Import `module` (a key of OPTIONAL or one of its submodules) for `feature` (e.g. "the embedded
    digits data set"), or raise MissingExtraError naming the extra that provides it (or `extra`)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{feature} needs {OPTIONAL[module.split('.')[0]][0]}, which is not installed: "
                                f"{install_hint(module, extra)}") from e


def available(module: str) -> bool:
    """Whether `module` imports (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
