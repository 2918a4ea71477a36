"""A DDP run that loses a rank: the survivor reports it as `erbnn train: error: ...` (exit status 2),
naming the lost rank and the intact last checkpoint, instead of a gloo traceback."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Each rank runs `erbnn train`; rank 1 dies (as if killed: no cleanup, no message) when its second epoch
# starts, after the first epoch's checkpoint was written by rank 0.
RANK = textwrap.dedent("""
    import importlib, os, sys
    from erbnn_ext import cli
    fit_module = importlib.import_module("erbnn_ext.training.fit")
    if os.environ["RANK"] == "1":
        real = fit_module.train_one_epoch
        def dying(*args, epoch, **kwargs):
            if epoch == 1:
                os._exit(9)
            return real(*args, epoch=epoch, **kwargs)
        fit_module.train_one_epoch = dying
    sys.exit(cli.main(sys.argv[1:]))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lost_rank_is_one_line_and_status_2(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    out = tmp_path / "run"
    base = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    cmd = [sys.executable, str(script), "train", "--epochs", "3", "--warmup", "1", "--limit-train", "128",
           "--batch-size", "64", "--threads", "1", "--no-progress", "--device", "cpu", "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        res = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 9
    err = res[0][1]
    assert procs[0].returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    line = lines[0]
    assert line.startswith("erbnn train: error: ") and "rank 1 of 2" in line and "lost" in line, line
    ckpt = out / "checkpoint.pt"
    assert str(ckpt) in line and "epoch 1" in line and "intact" in line, line
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1  # the checkpoint of the last finished epoch, readable
