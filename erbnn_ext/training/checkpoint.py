"""Checkpoint files: a plain dict of state_dicts (model, optimizer, scheduler), epoch, RNG states,
data-order state and the run's recipe, saved atomically (write a .tmp, then rename), so a failed save
keeps the previous file and leaves no .tmp behind."""
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, OutputError

CHECKPOINT = "checkpoint.pt"
RESUME_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "history")  # what fit(resume=...) reads


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
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class LoadedCheckpoint(dict):
    """A checkpoint's dict that remembers its file (for error messages)."""

    def __init__(self, data, path):
        super().__init__(data)
        self.path = path


def read_checkpoint(path, required=("model",)) -> LoadedCheckpoint:
    """torch.load(path) (weights only) as a dict holding `required`; CheckpointError naming the file and
    the cause otherwise (truncated, garbage, not a dict, keys missing)."""
    p = checkpoint_path(path)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: cannot read the checkpoint: the file is empty")
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive whose directory is at the end
        raise CheckpointError(f"{p}: cannot read the checkpoint: not a PyTorch checkpoint archive "
                              f"(truncated, or another kind of file)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file (zip, pickle, EOF, ...)
        cause = ("it holds objects other than tensors and plain containers, which are not loaded "
                 "(not written by `erbnn train`)" if "Weights only load failed" in str(e) else _first_line(e))
        raise CheckpointError(f"{p}: cannot read the checkpoint: {cause}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{p}: not a complete checkpoint: missing {', '.join(map(repr, missing))}")
    return LoadedCheckpoint(ckpt, p)


def load_checkpoint_dict(path, resume: bool = False) -> dict:
    """A checkpoint written by `erbnn train` (with everything a resume needs when resume=True)."""
    return read_checkpoint(path, ("arch", "args", *RESUME_KEYS, "data_state") if resume else ("model", "arch", "args"))


def load_state(module, state, what: str, path) -> None:
    """module.load_state_dict(state), a mismatch reported as a CheckpointError naming the file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: the {what} state does not fit: {_first_line(e)}") from None


def atomic_write(path: Path, write) -> None:
    """write(tmp) then rename tmp onto path. On any failure (full disk, unwritable folder) the .tmp is
    removed, the previous file kept, and an OutputError naming path and the cause raised."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        kept = "; the previous file is kept" if path.exists() else ""
        raise OutputError(f"cannot write {path}: {e.strerror or _first_line(e)}{kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_atomic(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def prepare_out(out: Path) -> Path:
    """Create the output folder; OutputError naming it if it cannot be created or written to."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".erbnn-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {out}: {e.strerror or _first_line(e)}") from None
    return out
