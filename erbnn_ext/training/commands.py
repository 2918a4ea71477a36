"""`erbnn train` / `erbnn eval`: data, model and recipe from the arguments, then the epochs."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import _backend
from ..data import BatchLoader, DataError, load_dataset
from ..models import build_model
from .args import eval_arguments, resolve_config, train_arguments
from .checkpoint import load_checkpoint_dict, load_state
from .dist import Dist, setup_runtime
from .errors import CheckpointError, TrainingError, UsageError
from .fit import fit
from .loop import evaluate

TRAIN_DESCRIPTION = "`erbnn train` / `erbnn eval`: the CIFAR-10 recipe of method.md section 5 for the 1W1A models."


def add_train_parser(sub):
    """Register `train` on an argparse subparsers object."""
    p = sub.add_parser("train", help="train a 1W1A model (method.md section 5)", description=TRAIN_DESCRIPTION)
    train_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def add_eval_parser(sub):
    """Register `eval` on an argparse subparsers object."""
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the test split")
    eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    return p


def _warn(msg):
    print(f"erbnn train: warning: {msg}", file=sys.stderr)


def run_train(args) -> dict:
    """Train as `erbnn train` does; returns {"model": the trained (unwrapped) model, "history": [...],
    "out": Path}. Raises TrainingError / DataError for bad arguments, files or data."""
    d = Dist()
    ckpt = load_checkpoint_dict(args.resume, resume=True) if args.resume else None
    cfg = resolve_config(args, ckpt)
    if cfg["batch_size"] % d.world_size:
        raise UsageError(f"--batch-size {cfg['batch_size']} must be divisible by the {d.world_size} ranks")
    if args.stop_after is not None and args.stop_after > cfg["epochs"]:
        raise UsageError(f"--stop-after {args.stop_after} exceeds --epochs {cfg['epochs']}")
    out = Path(args.out) if args.out else (ckpt.path.parent if ckpt is not None else
                                           Path("runs") / f"{cfg['model']}_{cfg['method']}_seed{cfg['seed']}")
    train_set, test_set = load_dataset(cfg["data"])
    if cfg["limit_train"]:
        train_set.images, train_set.labels = (train_set.images[: cfg["limit_train"]],
                                              train_set.labels[: cfg["limit_train"]])
    device = setup_runtime(args, d)

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    random.seed(cfg["seed"])
    model = build_model(cfg["model"], train_set.num_classes, cfg["method"])
    per_rank = cfg["batch_size"] // d.world_size
    train_loader = BatchLoader(train_set, per_rank, True, cfg["seed"], d.rank, d.world_size, args.workers)
    test_loader = BatchLoader(test_set, per_rank, False, cfg["seed"], d.rank, d.world_size, args.workers)
    meta = {"arch": cfg["model"], "method": cfg["method"], "num_classes": train_set.num_classes, "args": cfg,
            "data_state": {"seed": cfg["seed"]}}
    config = dict(cfg, world_size=d.world_size, device=str(device), backend=_backend.get_backend())
    return fit(model, train_loader, test_loader, epochs=cfg["epochs"], lr=cfg["lr"], momentum=cfg["momentum"],
               weight_decay=cfg["weight_decay"], warmup=cfg["warmup"], percentile=(cfg["p0"], cfg["p1"]),
               out=out, resume=ckpt, stop_after=args.stop_after, device=device, distributed=d.enabled,
               progress=d.main and not args.no_progress, meta=meta, config=config,
               title=f"{cfg['model']} ({cfg['method']}), seed {cfg['seed']}",
               log=lambda line: print(line, flush=True), on_warning=_warn)


def _fail(cmd, e) -> int:
    print(f"erbnn {cmd}: error: {e}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    try:
        run_train(args)
    except (TrainingError, DataError) as e:
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
    device = setup_runtime(args, d)
    _, test_set = load_dataset(args.data if args.data is not None else ckpt["args"].get("data"))
    try:
        model = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("method", "erbnn"))
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    load_state(model, ckpt["model"], "model", ckpt.path)
    model.to(device)
    loader = BatchLoader(test_set, args.batch_size, False, workers=args.workers)
    loss, top1, n = evaluate(model, loader, device)
    return {"checkpoint": str(ckpt.path), "data": test_set.name, "top1": top1,
            "loss": loss, "samples": n, "epoch": ckpt.get("epoch")}


def cmd_eval(args) -> int:
    try:
        res = run_eval(args)
    except (TrainingError, DataError) as e:
        return _fail("eval", e)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"top-1 {res['top1']:.2f}% ({res['samples']} images of {res['data']}, loss {res['loss']:.4f}, "
              f"epoch {res['epoch']})")
    return 0
