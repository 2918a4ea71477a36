"""erbnn_ext.training.fit on a user's own model, and the CLI's one-line errors (checkpoints, outputs, a full
disk, a diverging loss)."""
import errno
import json

import pytest
import torch
from torch import nn

from erbnn_ext import cli
from erbnn_ext.data import BatchLoader, load_dataset
from erbnn_ext.nn import ERBinaryConv2d, binarize_
from erbnn_ext.training import NonFiniteError, fit
from erbnn_ext.training import checkpoint as ckpt_mod
from erbnn_ext.training import loop as loop_mod

SMALL = ["--limit-train", "128", "--batch-size", "64", "--warmup", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _own_model():
    """A user's torchvision-style network, binarized in place (stem and classifier stay float)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardtanh(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return binarize_(net)


def _digits(limit):
    train, test = load_dataset(None)
    train.images, train.labels = train.images[:limit], train.labels[:limit]
    return train, test


def test_fit_trains_a_binarized_user_model_and_resumes(tmp_path):
    model = _own_model()
    assert sum(isinstance(m, ERBinaryConv2d) for m in model.modules()) == 2
    train, test = _digits(512)
    tl, vl = BatchLoader(train, 32, True, seed=0), BatchLoader(test, 128, False)
    lines = []
    res = fit(model, tl, vl, epochs=3, lr=0.05, warmup=1, percentile=(0.8, 0.2), out=tmp_path / "run",
              stop_after=2, log=lines.append, title="mine")
    hist = res["history"]
    assert [r["epoch"] for r in hist] == [1, 2] and len(lines) == 2 and lines[0].startswith("epoch 1/3 lr=0.05 p=0.8")
    assert [r["p"] for r in hist] == pytest.approx([0.8, 0.8 - 0.6 / 3])  # the percentile schedule
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["data_state"] == {"epoch": 2, "world_size": 1}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "curves.png", "metrics.csv",
                                                                    "metrics.json"]
    # resuming a fresh copy of the model from the file finishes the run where it stopped
    again = _own_model()
    res2 = fit(again, tl, vl, epochs=3, lr=0.05, warmup=1, percentile=(0.8, 0.2), out=tmp_path / "run",
               resume=tmp_path / "run", log=None)
    assert [r["epoch"] for r in res2["history"]] == [1, 2, 3]
    assert res2["history"][2]["p"] == pytest.approx(0.8 - 1.2 / 3)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_done"] == 3


def test_fit_takes_a_plain_dataloader_and_no_validation():
    model = _own_model()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    res = fit(model, dl, None, epochs=2, warmup=0, log=None)
    assert [set(r) >= {"train_loss", "train_acc", "p"} and "test_acc" not in r for r in res["history"]] == [True, True]
    assert res["out"] is None


def test_fit_warns_when_the_run_never_leaves_warmup(tmp_path, capsys):
    model = _own_model()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    with pytest.warns(UserWarning, match=r"epochs \(2\) < warmup \(17\).*linear warm-up"):
        fit(model, dl, None, epochs=2, log=None)
    assert cli.main(["train", "--epochs", "1", "--warmup", "3", "--out", str(tmp_path / "w"), "--limit-train", "64",
                     "--batch-size", "64", "--threads", "1", "--no-progress"]) == 0
    assert "erbnn train: warning: epochs (1) < warmup (3)" in capsys.readouterr().err


class _NanAt(nn.Module):
    """Passes x through, but returns NaN from the `at`-th training call on."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                out = out * float("nan")
        return out


def test_fit_stops_at_a_nan_loss_naming_epoch_and_step():
    model = _NanAt(_own_model(), at=7)  # 4 steps per epoch: the 3rd step of epoch 2
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"loss is nan at epoch 2, step 3 of 4"):
        fit(model, dl, None, epochs=3, warmup=0, log=None)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the NaN step's update
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_nan_loss_is_one_line(tmp_path, monkeypatch, capsys):
    real, calls = loop_mod.F.cross_entropy, []

    def nan_on_second(out, y, **kw):
        calls.append(1)
        loss = real(out, y, **kw)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(loop_mod.F, "cross_entropy", nan_on_second)
    assert cli.main(["train", "--epochs", "2", "--out", str(tmp_path / "o"), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["erbnn train: error: training stopped: the loss is nan at epoch 1, step 2 of 2 "
                   "(diverged; try a lower learning rate)"]


def _one_epoch(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--stop-after", "1", "--out", str(out), *SMALL]) == 0
    return out / "checkpoint.pt"


def _one_error_line(capsys, cmd):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"erbnn {cmd}: error: "), err
    return err[0]


def test_damaged_checkpoints_are_one_line_errors(tmp_path, capsys):
    good = _one_epoch(tmp_path)
    data = good.read_bytes()
    truncated, garbage, partial, other = (tmp_path / n for n in ("trunc.pt", "garbage.pt", "partial.pt", "other.pt"))
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"this is not a checkpoint\n" * 40)
    full = torch.load(good, weights_only=True)
    torch.save({k: v for k, v in full.items() if k != "optimizer"}, partial)
    torch.save({"weights": torch.zeros(3)}, other)
    capsys.readouterr()
    for path, cause in ((truncated, "cannot read the checkpoint"), (garbage, "cannot read the checkpoint"),
                        (partial, "missing 'optimizer'")):
        assert cli.main(["train", "--resume", str(path), "--no-progress", "--threads", "1"]) == 2
        line = _one_error_line(capsys, "train")
        assert str(path) in line and cause in line, line
    for path, cause in ((truncated, "cannot read the checkpoint"), (other, "missing 'model', 'arch', 'args'")):
        assert cli.main(["eval", str(path), "--threads", "1"]) == 2
        line = _one_error_line(capsys, "eval")
        assert str(path) in line and cause in line, line
    # a model state that does not fit the architecture
    torch.save(dict(full, model={"conv1.weight": torch.zeros(1)}), partial)
    assert cli.main(["eval", str(partial), "--threads", "1"]) == 2
    line = _one_error_line(capsys, "eval")
    assert str(partial) in line and "the model state does not fit" in line


def test_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run"  # a folder below a regular file cannot be created (also as root)
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 2
    line = _one_error_line(capsys, "train")
    assert f"cannot write to the output folder {out}: Not a directory" in line


def test_full_disk_keeps_the_previous_checkpoint_and_no_tmp(tmp_path, monkeypatch, capsys):
    good = _one_epoch(tmp_path)
    before = good.read_bytes()

    def full_disk(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(good), "--no-progress", "--threads", "1"]) == 2
    line = _one_error_line(capsys, "train")
    assert line == (f"erbnn train: error: cannot write {good}: No space left on device; the previous file is kept")
    assert good.read_bytes() == before
    assert not list(good.parent.glob("*.tmp"))


def test_short_model_names_on_the_command_line():
    p = cli.build_parser()
    assert p.parse_args(["train", "--model", "resnet20"]).model == "resnet20_1w1a"
    assert p.parse_args(["train", "--model", "vgg_small"]).model == "vgg_small_1w1a"
    assert p.parse_args(["train", "--model", "resnet18_1w1a"]).model == "resnet18_1w1a"
    assert p.parse_args(["train", "--model", "resnet18_imagenet"]).model == "resnet18_1w1a_imagenet"
