"""Optional dependencies (pyproject's extras): a backend install (torch and numpy only) imports and runs;
a feature that needs an extra says which one; the CLI degrades where it can (no bar, no PNG)."""
import json
import os
import subprocess
import sys

import pytest

import erbnn_ext
from erbnn_ext import _extras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(erbnn_ext.__file__)))
OPTIONAL_MODULES = ("tqdm", "matplotlib", "sklearn", "scipy")


def _block(monkeypatch, *names):
    """Make `import name` (and its submodules) raise ImportError, as in an environment without it."""
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, name)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_pyproject_requires_only_torch_and_numpy():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert sorted(d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    assert {"bench", "train", "all", "test"} <= set(extras)
    for module, (package, extra) in _extras.OPTIONAL.items():
        assert package in extras[extra] and package in extras["all"], (module, extra)


def test_the_package_and_cli_import_without_the_extras():
    """A subprocess where the optional modules cannot be imported: the package, the ops, the CLI parser and the
    training and benchmark modules all import (nothing needs an extra at import time)."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {OPTIONAL_MODULES!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import erbnn_ext, erbnn_ext.functional, erbnn_ext.nn, erbnn_ext.training, erbnn_ext.data, erbnn_ext.deploy
import erbnn_ext.benchmarks.run, erbnn_ext.benchmarks.report, erbnn_ext.benchmarks.cli
from erbnn_ext.cli import build_parser
build_parser().parse_args(['bench', '--quick'])
assert not [m for m in sys.modules if m.split('.')[0] in {OPTIONAL_MODULES!r}]
print('ok')
"""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    from erbnn_ext.data import load_digits
    _block(monkeypatch, "sklearn")
    with pytest.raises(_extras.MissingExtraError, match=r"digits.*scikit-learn.*erbnn-ext\[train\]"):
        load_digits()


def test_train_without_scikit_learn_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from erbnn_ext import cli
    _block(monkeypatch, "sklearn")
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erbnn train: error: ") and "erbnn-ext[train]" in err


def test_bench_without_tqdm_and_matplotlib(monkeypatch, tmp_path, capsys):
    """The benchmark still measures and writes bench.json; it says bench.png needs the bench extra."""
    from erbnn_ext import cli
    _block(monkeypatch, "tqdm", "matplotlib")
    assert cli.main(["bench", "--quick", "--threads", "1", "--models", "resnet20", "--sections", "conv",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "erbnn-ext[bench]" in out.out and "bench.png" in out.out
    assert "erbnn bench: conv 1/" in out.err  # progress as lines without tqdm (and without a terminal)
    assert json.loads((tmp_path / "bench.json").read_text())["complete"] is True
    assert not (tmp_path / "bench.png").exists()
    from erbnn_ext.benchmarks import report
    with pytest.raises(_extras.MissingExtraError, match=r"bench\.png.*erbnn-ext\[bench\]"):
        report.write_png({}, str(tmp_path / "x.png"))


def test_fit_without_matplotlib_skips_the_curves(monkeypatch, tmp_path):
    import torch

    from erbnn_ext.training import fit
    _block(monkeypatch, "matplotlib", "tqdm")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"curves\.png.*erbnn-ext\[train\]"):
        fit(model, batches, batches, epochs=1, warmup=0, out=tmp_path, log=None, progress=True)
    assert (tmp_path / "metrics.json").exists() and not (tmp_path / "curves.png").exists()
