"""`erbnn train` / `erbnn eval` on an ImageNet-style folder: the ImageNet recipe's defaults, mixed
precision, channels-last, float-only weight decay, and two torchrun ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from erbnn_ext import cli, nn as enn
from erbnn_ext.training.recipe import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """DIR/train: 3 classes x 4 PNGs of 40x30; DIR/val: 3 classes x 2."""
    from PIL import Image
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_train_and_eval_on_an_image_folder(tree, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tree), "--stop-after", "1", "--batch-size", "4", "--amp", "bf16",
            "--channels-last", "--out", str(out), *QUIET]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    cfg, row = m["config"], m["history"][0]
    # the ImageNet recipe's defaults (docs/imagenet.md)
    assert (cfg["model"], cfg["epochs"], cfg["warmup"], cfg["lr"], cfg["momentum"]) == \
        ("resnet18_1w1a_imagenet", 120, 0, 0.1, 0.9)
    assert cfg["weight_decay"] == 1e-4 and cfg["decay_binary"] is False and cfg["batch_size"] == 4
    assert cfg["amp"] == "bf16" and cfg["channels_last"] is True
    assert row["lr"] == pytest.approx(0.1) and row["p"] == pytest.approx(0.8)
    assert row["train_samples"] == 12 and row["test_samples"] == 6
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["num_classes"] == 3 and ckpt["arch"] == "resnet18_1w1a_imagenet"
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [1e-4, 0.0]
    capsys.readouterr()
    assert cli.main(["eval", str(out / "checkpoint.pt"), "--data", str(tree), "--batch-size", "4", "--json",
                     "--threads", "1", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["samples"] == 6 and "imagefolder-val" in res["data"]
    assert res["loss"] == pytest.approx(row["test_loss"], rel=0.05)  # bf16 in training vs float32 here


def test_float_only_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), enn.ERBinaryConv2d(4, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(model, 0.1, 0.9, 1e-4, decay_binary=False)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert [id(p) for p in plain["params"]] == [id(model[1].weight)]
    assert len(decayed["params"]) == 3  # float conv weight, BN weight and bias
    assert len(make_optimizer(model, 0.1, 0.9, 1e-4).param_groups) == 1  # the CIFAR recipe: decay all


def test_amp_and_model_name_errors(tree, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert cli.main(["train", "--data", str(tree), "--amp", "fp16", "--out", out, *QUIET]) == 2
    assert "--amp fp16 needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--amp", "int8"])
    assert "invalid choice" in capsys.readouterr().err


WRAPPER = """
import sys, torch, torch.distributed as dist
from erbnn_ext.cli import build_parser
from erbnn_ext.training import run_train
args = build_parser().parse_args(sys.argv[1:])
res = run_train(args)
torch.save(res["model"].state_dict(), f"{args.out}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_torchrun_two_ranks_on_an_image_folder(tree, tmp_path):
    """torchrun --standalone (env:// rendezvous, gloo on the CPU): the ranks split the images, train the
    same model and all-reduce the accuracy over every val image."""
    script = tmp_path / "ddp.py"
    script.write_text(WRAPPER)
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "train", "--data", str(tree), "--model", "resnet18_imagenet", "--stop-after", "1", "--batch-size", "4",
           "--workers", "1", "--out", str(out), *QUIET]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2))
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["world_size"] == 2 and m["config"]["model"] == "resnet18_1w1a_imagenet"
    assert m["history"][0]["train_samples"] == 12 and m["history"][0]["test_samples"] == 6
