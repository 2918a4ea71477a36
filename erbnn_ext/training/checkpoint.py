"""Checkpoint files: a plain dict of state_dicts (model, optimizer, scheduler), epoch, RNG states,
data-order state and the run's recipe, saved atomically (write a .tmp, then rename)."""
import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(path) -> Path:
    """The checkpoint file named by path (a file, or a folder holding checkpoint.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise UsageError(f"checkpoint not found: {p}")
    return p


def load_checkpoint_dict(path) -> dict:
    p = checkpoint_path(path)
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"model", "arch", "args"} <= set(ckpt):
        raise UsageError(f"{p}: not a checkpoint written by `erbnn train`")
    return ckpt


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
