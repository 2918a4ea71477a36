"""The process's place in a torchrun job, its device and the process group (gloo on CPU, nccl on CUDA)."""
import os
import time

import torch
import torch.distributed as dist

from .. import _backend
from .errors import UsageError


class Dist:
    """This process's place in a torchrun job (world_size 1 without one)."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @classmethod
    def current(cls) -> "Dist":
        """The initialised process group's rank and size if there is one, else the torchrun environment."""
        d = cls()
        if dist.is_available() and dist.is_initialized():
            d.rank, d.world_size = dist.get_rank(), dist.get_world_size()
            d.enabled = d.world_size > 1
        return d

    @classmethod
    def single(cls) -> "Dist":
        d = cls()
        d.rank, d.world_size, d.enabled = 0, 1, False
        return d

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def resolve_device(name: str, d: Dist) -> torch.device:
    """--device (cpu, cuda, cuda:N, auto) as a torch.device; under torchrun each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        if d.enabled or dev.index is None:
            dev = torch.device("cuda", d.local_rank if d.enabled else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise UsageError(f"--device must be cpu or cuda, got {name!r}")
    return dev


def setup_runtime(args, d: Dist) -> torch.device:
    """Threads, ER-BNN backend, device, deterministic cuDNN and (under torchrun) the process group."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        _backend.set_backend(args.backend)
    dev = resolve_device(args.device, d)
    torch.backends.cudnn.benchmark = False  # exact resume needs the same algorithms every run
    torch.backends.cudnn.deterministic = True
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def broadcast_buffers(model):
    """Rank 0's buffers to every rank. The binary layers update ring buffers (and BatchNorm its running
    statistics) in forward from the local batch; DDP syncs rank 0's buffers before each forward,
    and this call makes the ranks identical after the last step of an epoch too."""
    for b in model.buffers():
        dist.broadcast(b, 0)


# How the process-group backends report a peer that went away (gloo's tcp transport, nccl, the store).
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote worker crash",
              "nccl communicator was aborted", "distnetworkerror", "socket timeout", "timed out")


def is_lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (not a bug of this rank)."""
    dist_error = getattr(dist, "DistError", RuntimeError)
    if not isinstance(exc, (RuntimeError, dist_error)):
        return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(m in text for m in _LOST_PEER)


def lost_ranks(d: Dist, wait_s: float = 3.0) -> list:
    """The ranks that are gone, as this survivor sees them: in a 2-rank job the other one; otherwise the
    ranks that do not mark themselves alive in the job's store within wait_s (survivors of the same
    failure call this too). [] where the store cannot tell."""
    if d.world_size == 2:
        return [1 - d.rank]
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"erbnn/alive/{d.rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            alive = {r for r in range(d.world_size) if store.check([f"erbnn/alive/{r}"])}
            if len(alive) == d.world_size or time.monotonic() > deadline:
                return [r for r in range(d.world_size) if r not in alive]
            time.sleep(0.1)
    except Exception:  # the store went with the lost rank (it hosted it): no way to tell which
        return []
