"""`erbnn train` / `erbnn eval`: the CIFAR-10 recipe of method.md section 5 for the 1W1A models.

SGD (lr 0.1, momentum 0.9, weight decay 1e-4; 2e-4 for ResNet-18), batch 256, cross-entropy; per
epoch e of E: lr factor (e + 1) / W for the W = 17 warm-up epochs, then 0.5 * (1 + cos(pi * (e - (W - 1))
/ (E - (W - 1)))); every binarizer schedule (p of ER-BNN, t of EDE, tau of ReCU) set once per epoch.

Outputs (rank 0 only) in --out: metrics.csv, metrics.json, curves.png, checkpoint.pt (every epoch; a
plain dict of state_dicts: model, optimizer, scheduler, epoch, RNG states, data-order state, args).
--resume continues bit for bit: N epochs in one run equal N - 1 epochs (--stop-after) + a resumed one.
Under torchrun the same code runs DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is
the global batch, split evenly over the ranks.
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import _backend
from .data import BatchLoader, DataError, load_dataset
from .models import METHODS, MODELS, build_model
from .nn import set_epoch

DEFAULTS = {"model": "resnet20_1w1a", "method": "erbnn", "epochs": 1000, "batch_size": 256, "lr": 0.1,
            "momentum": 0.9, "weight_decay": None, "warmup": 17, "seed": 0, "data": None, "p0": 0.8,
            "p1": 0.0, "limit_train": None}
RECIPE_KEYS = tuple(DEFAULTS)  # these define the run: taken from the checkpoint on --resume
CHECKPOINT = "checkpoint.pt"


class UsageError(Exception):
    """Bad command-line arguments (reported as `erbnn: error: ...`, exit status 2)."""


# --------------------------------------------------------------------------------------- argument parsing
def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s):
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def _unit_float(s):
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def _runtime_args(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--backend", choices=_backend.BACKENDS, default=None,
                   help="ER-BNN ops: native kernels or the pure-PyTorch reference (default: $ERBNN_BACKEND "
                        "or native)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per process")
    p.add_argument("--workers", type=_nonneg_int, default=0, help="data-loading worker processes")


def add_train_parser(sub):
    """Register `train` on an argparse subparsers object."""
    p = sub.add_parser("train", help="train a 1W1A model (method.md section 5)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default=None, help=f"default {DEFAULTS['model']}")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="binarizer: erbnn (default) or the ablations clip, ede, irnet, recu")
    p.add_argument("--epochs", type=_positive_int, default=None, help="E (default 1000)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global batch (default 256)")
    p.add_argument("--lr", type=_positive_float, default=None, help="base learning rate (default 0.1)")
    p.add_argument("--momentum", type=_nonneg_float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="default 1e-4 (2e-4 for resnet18_1w1a)")
    p.add_argument("--warmup", type=_nonneg_int, default=None, help="linear warm-up epochs (default 17)")
    p.add_argument("--p0", type=_unit_float, default=None, help="ER-BNN percentile at epoch 0 (0.8)")
    p.add_argument("--p1", type=_unit_float, default=None, help="ER-BNN percentile at the end (0.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 cifar-10-batches-py folder (or its parent); default: the embedded "
                        "scikit-learn digits")
    p.add_argument("--limit-train", type=_positive_int, default=None,
                   help="train on the first N images of the training split only (smoke runs)")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>_<method>_seed<seed>)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint file (or a folder holding checkpoint.pt)")
    p.add_argument("--stop-after", type=_positive_int, default=None, metavar="K",
                   help="stop once K epochs in total are done (the schedules still span --epochs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    _runtime_args(p)
    p.set_defaults(func=cmd_train)
    return p


def add_eval_parser(sub):
    """Register `eval` on an argparse subparsers object."""
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the test split")
    p.add_argument("checkpoint", help="checkpoint.pt written by `erbnn train`")
    p.add_argument("--data", default=None, help="CIFAR-10 folder (default: the data the model trained on)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON")
    _runtime_args(p)
    p.set_defaults(func=cmd_eval)
    return p


# ------------------------------------------------------------------------------------------ the recipe
def lr_factor(epoch: int, epochs: int, warmup: int = 17) -> float:
    """method.md section 5: (e + 1) / W for e < W, then 0.5 * (1 + cos(pi * (e - s) / (E - s))), s = W - 1
    (W = 17 gives the paper's (e - 16) / (E - 16))."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    s = max(warmup - 1, 0)
    return 0.5 * (1 + math.cos(math.pi * (epoch - s) / (epochs - s)))


def default_weight_decay(model: str) -> float:
    return 2e-4 if model == "resnet18_1w1a" else 1e-4


# ---------------------------------------------------------------------------------------- environment
class Dist:
    """This process's place in a torchrun job (world_size 1 without one)."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _device(name: str, d: Dist) -> torch.device:
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


def _setup_runtime(args, d: Dist) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        _backend.set_backend(args.backend)
    dev = _device(args.device, d)
    torch.backends.cudnn.benchmark = False  # exact resume needs the same algorithms every run
    torch.backends.cudnn.deterministic = True
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


# ---------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise UsageError(f"checkpoint not found: {p}")
    return p


def load_checkpoint_dict(path) -> dict:
    p = _checkpoint_path(path)
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"model", "arch", "args"} <= set(ckpt):
        raise UsageError(f"{p}: not a checkpoint written by `erbnn train`")
    return ckpt


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- bookkeeping
COLUMNS = ("epoch", "lr", "p", "t", "tau", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
           "train_samples", "test_samples")


def _write_metrics(out: Path, history: list, config: dict) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in COLUMNS})
    best = max(history, key=lambda r: r["test_acc"]) if history else None
    summary = {"config": config, "epochs_done": len(history), "history": history,
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "best_test_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")


def _plot(out: Path, history: list, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "loss", "cross-entropy"),
                           (fig.add_subplot(1, 2, 2), "acc", "top-1 (%)")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", label="train", markersize=3)
        ax.plot(ep, [r[f"test_{key}"] for r in history], "s-", label="test", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)


# ------------------------------------------------------------------------------------------- loops
def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_one_epoch(model, loader, optimizer, device, d: Dist, desc="train", progress=False):
    """One pass over loader; returns (mean loss, top-1 %, samples) over all ranks."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
    bar = _progress(loader, len(loader), desc, progress)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * y.numel(), (out.argmax(1) == y).sum().double(),
                                 torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
        if progress and step % 5 == 0:
            bar.set_postfix(loss=f"{sums[0].item() / max(sums[2].item(), 1):.3f}",
                            acc=f"{100 * sums[1].item() / max(sums[2].item(), 1):.1f}")
    sums = d.all_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, int(sums[2].item())


@torch.no_grad()
def evaluate(model, loader, device, d: Dist = None, progress=False, desc="test"):
    """(mean loss, top-1 %, samples) of model in eval mode over loader, summed over the ranks of d."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in _progress(loader, len(loader), desc, progress):
        x, y = x.to(device), y.to(device)
        out = model(x)
        sums[0] += F.cross_entropy(out, y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum().double()
        sums[2] += y.numel()
    if d is not None:
        d.all_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, int(sums[2].item())


def _broadcast_buffers(model):
    """Rank 0's buffers to every rank. The binary layers update ring buffers (and BatchNorm its running
    statistics) in forward from the local batch; DDP syncs rank 0's buffers before each forward,
    and this call makes the ranks identical after the last step of an epoch too."""
    for b in model.buffers():
        dist.broadcast(b, 0)


# ------------------------------------------------------------------------------------------ commands
def _resolve_config(args, ckpt):
    cfg = {}
    for k in RECIPE_KEYS:
        given = getattr(args, k, None)
        saved = ckpt["args"].get(k) if ckpt else None
        if ckpt is not None and given is not None and given != saved and k != "epochs":
            raise UsageError(f"--{k.replace('_', '-')} {given} differs from the checkpoint's {saved!r}; "
                             f"a resumed run keeps its recipe (only --epochs may change)")
        cfg[k] = given if given is not None else (saved if ckpt is not None else DEFAULTS[k])
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = default_weight_decay(cfg["model"])
    if cfg["p1"] > cfg["p0"]:
        raise UsageError(f"--p1 ({cfg['p1']}) must not exceed --p0 ({cfg['p0']})")
    return cfg


def run_train(args) -> dict:
    """Train as `erbnn train` does; returns {"model": the trained (unwrapped) model, "history": [...],
    "out": Path}. Raises UsageError / DataError for bad arguments or data."""
    d = Dist()
    ckpt = load_checkpoint_dict(args.resume) if args.resume else None
    cfg = _resolve_config(args, ckpt)
    if cfg["batch_size"] % d.world_size:
        raise UsageError(f"--batch-size {cfg['batch_size']} must be divisible by the {d.world_size} ranks")
    if args.stop_after is not None and args.stop_after > cfg["epochs"]:
        raise UsageError(f"--stop-after {args.stop_after} exceeds --epochs {cfg['epochs']}")
    out = Path(args.out) if args.out else (_checkpoint_path(args.resume).parent if args.resume else
                                           Path("runs") / f"{cfg['model']}_{cfg['method']}_seed{cfg['seed']}")
    train_set, test_set = load_dataset(cfg["data"])
    if cfg["limit_train"]:
        train_set.images, train_set.labels = (train_set.images[: cfg["limit_train"]],
                                              train_set.labels[: cfg["limit_train"]])
    device = _setup_runtime(args, d)

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    random.seed(cfg["seed"])
    model = build_model(cfg["model"], train_set.num_classes, cfg["method"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    E, W = cfg["epochs"], cfg["warmup"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, E, W))
    start, history = 0, []
    if ckpt is not None:
        if ckpt["data_state"]["world_size"] != d.world_size and d.main:
            print(f"erbnn train: warning: resuming a {ckpt['data_state']['world_size']}-rank run on "
                  f"{d.world_size} ranks: the data order differs from an uninterrupted run", file=sys.stderr)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start, history = int(ckpt["epoch"]), list(ckpt.get("history", []))
    net = model
    if d.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=True)

    per_rank = cfg["batch_size"] // d.world_size
    train_loader = BatchLoader(train_set, per_rank, True, cfg["seed"], d.rank, d.world_size, args.workers)
    test_loader = BatchLoader(test_set, per_rank, False, cfg["seed"], d.rank, d.world_size, args.workers)
    stop = min(args.stop_after or E, E)
    progress = d.main and not args.no_progress
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    config = dict(cfg, world_size=d.world_size, device=str(device), backend=_backend.get_backend())
    for epoch in range(start, stop):
        t0 = time.perf_counter()
        sched = set_epoch(model, epoch, E, cfg["p0"], cfg["p1"])
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        tr_loss, tr_acc, tr_n = train_one_epoch(net, train_loader, optimizer, device, d,
                                          desc=f"epoch {epoch + 1}/{E}", progress=progress)
        scheduler.step()
        if d.enabled:
            _broadcast_buffers(model)
        te_loss, te_acc, te_n = evaluate(model, test_loader, device, d)
        row = {"epoch": epoch + 1, "lr": lr, **sched, "train_loss": tr_loss, "train_acc": tr_acc,
               "test_loss": te_loss, "test_acc": te_acc, "epoch_time_s": time.perf_counter() - t0, "train_samples": tr_n, "test_samples": te_n}
        history.append(row)
        if d.main:
            sched_txt = " ".join(f"{k}={v:.4g}" for k, v in sched.items())
            print(f"epoch {epoch + 1}/{E} lr={lr:.4g} {sched_txt} train loss {tr_loss:.4f} acc {tr_acc:.2f}% "
                  f"| test loss {te_loss:.4f} acc {te_acc:.2f}% | {row['epoch_time_s']:.1f}s", flush=True)
            _save_atomic({"arch": cfg["model"], "method": cfg["method"], "num_classes": train_set.num_classes,
                          "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                          "data_state": {"seed": cfg["seed"], "epoch": epoch + 1, "world_size": d.world_size},
                          "args": cfg, "history": history}, out / CHECKPOINT)
            _write_metrics(out, history, config)
            _plot(out, history, f"{cfg['model']} ({cfg['method']}), seed {cfg['seed']}")
    if d.enabled:
        dist.barrier()
    return {"model": model, "history": history, "out": out}


def _fail(cmd, e) -> int:
    print(f"erbnn {cmd}: error: {e}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    try:
        run_train(args)
    except (UsageError, DataError) as e:
        return _fail("train", e)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run_eval(args) -> dict:
    """{"top1": %, "loss": ..., "samples": n} of a checkpoint on the test split."""
    ckpt = load_checkpoint_dict(args.checkpoint)
    d = Dist()
    d.enabled = False  # evaluation is single-process
    device = _setup_runtime(args, d)
    _, test_set = load_dataset(args.data if args.data is not None else ckpt["args"].get("data"))
    model = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("method", "erbnn"))
    model.load_state_dict(ckpt["model"])
    model.to(device)
    loader = BatchLoader(test_set, args.batch_size, False, workers=args.workers)
    loss, top1, n = evaluate(model, loader, device)
    return {"checkpoint": str(_checkpoint_path(args.checkpoint)), "data": test_set.name, "top1": top1,
            "loss": loss, "samples": n, "epoch": ckpt.get("epoch")}


def cmd_eval(args) -> int:
    try:
        res = run_eval(args)
    except (UsageError, DataError) as e:
        return _fail("eval", e)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"top-1 {res['top1']:.2f}% ({res['samples']} images of {res['data']}, loss {res['loss']:.4f}, "
              f"epoch {res['epoch']})")
    return 0
