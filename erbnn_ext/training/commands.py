"""`erbnn train` / `erbnn eval`: data, model and recipe from the arguments, then the epochs."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import _backend
from .._extras import MissingExtraError
from ..data import DataError, is_imagefolder, make_loader, open_data
from ..models import build_model
from .args import eval_arguments, resolve_config, train_arguments
from .checkpoint import load_checkpoint_dict, load_state
from .dist import Dist, setup_runtime
from .errors import CheckpointError, TrainingError, UsageError
from .fit import fit
from .loop import evaluate
from .recipe import make_optimizer

TRAIN_DESCRIPTION = ("`erbnn train` / `erbnn eval`: the CIFAR-10 recipe of method.md section 5 for the 1W1A models; "
                     "on an ImageNet-style --data folder the ImageNet recipe of docs/imagenet.md.")


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
    train_set, test_set = open_data(cfg["data"], cfg["seed"], cfg["limit_train"])
    device = setup_runtime(args, d)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    random.seed(cfg["seed"])
    model = build_model(cfg["model"], train_set.num_classes, cfg["method"])
    imagenet = cfg["data"] is not None and is_imagefolder(cfg["data"])
    optimizer = make_optimizer(model, cfg["lr"], cfg["momentum"], cfg["weight_decay"], decay_binary=not imagenet)
    per_rank = cfg["batch_size"] // d.world_size
    train_loader = make_loader(train_set, per_rank, True, cfg["seed"], d.rank, d.world_size, args.workers)
    test_loader = make_loader(test_set, per_rank, False, cfg["seed"], d.rank, d.world_size, args.workers)
    meta = {"arch": cfg["model"], "method": cfg["method"], "num_classes": train_set.num_classes, "args": cfg,
            "data_state": {"seed": cfg["seed"]}}
    config = dict(cfg, world_size=d.world_size, device=str(device), backend=_backend.get_backend(), amp=args.amp,
                  channels_last=args.channels_last, decay_binary=not imagenet)
    return fit(model, train_loader, test_loader, epochs=cfg["epochs"], lr=cfg["lr"], momentum=cfg["momentum"],
               weight_decay=cfg["weight_decay"], warmup=cfg["warmup"], percentile=(cfg["p0"], cfg["p1"]),
               optimizer=optimizer, amp=args.amp, channels_last=args.channels_last,
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
    except (TrainingError, DataError, MissingExtraError) as e:
        return _fail("train", e)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a lost rank (already reported) can make the teardown fail too
                pass
    return 0


def run_eval(args) -> dict:
    """{"top1": %, "loss": ..., "samples": n} of a checkpoint on the test split."""
    ckpt = load_checkpoint_dict(args.checkpoint)
    d = Dist()
    d.enabled = False  # evaluation is single-process
    device = setup_runtime(args, d)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")
    _, test_set = open_data(args.data if args.data is not None else ckpt["args"].get("data"))
    try:
        model = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("method", "erbnn"))
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    load_state(model, ckpt["model"], "model", ckpt.path)
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    loader = make_loader(test_set, args.batch_size, False, workers=args.workers)
    loss, top1, n = evaluate(model, loader, device, amp=args.amp, channels_last=args.channels_last)
    return {"checkpoint": str(ckpt.path), "data": test_set.name, "top1": top1,
            "loss": loss, "samples": n, "epoch": ckpt.get("epoch")}


def cmd_eval(args) -> int:
    try:
        res = run_eval(args)
    except (TrainingError, DataError, MissingExtraError) as e:
        return _fail("eval", e)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"top-1 {res['top1']:.2f}% ({res['samples']} images of {res['data']}, loss {res['loss']:.4f}, "
              f"epoch {res['epoch']})")
    return 0
