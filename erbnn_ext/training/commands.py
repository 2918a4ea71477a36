"""`erbnn train` / `erbnn eval`: data, model and recipe from the arguments, then the epochs."""
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import _backend
from ..data import DataError, is_imagefolder, make_loader, open_data
from ..models import build_model
from .args import eval_arguments, resolve_config, train_arguments
from .checkpoint import CHECKPOINT, checkpoint_path, load_checkpoint_dict, rng_state, save_atomic, set_rng_state
from .dist import Dist, broadcast_buffers, setup_runtime
from .errors import UsageError
from .loop import evaluate, train_one_epoch
from .metrics import epoch_line, plot, write_metrics
from .recipe import epoch_schedules, make_optimizer, make_scheduler

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


def run_train(args) -> dict:
    """Train as `erbnn train` does; returns {"model": the trained (unwrapped) model, "history": [...],
    "out": Path}. Raises UsageError / DataError for bad arguments or data."""
    d = Dist()
    ckpt = load_checkpoint_dict(args.resume) if args.resume else None
    cfg = resolve_config(args, ckpt)
    if cfg["batch_size"] % d.world_size:
        raise UsageError(f"--batch-size {cfg['batch_size']} must be divisible by the {d.world_size} ranks")
    if args.stop_after is not None and args.stop_after > cfg["epochs"]:
        raise UsageError(f"--stop-after {args.stop_after} exceeds --epochs {cfg['epochs']}")
    out = Path(args.out) if args.out else (checkpoint_path(args.resume).parent if args.resume else
                                           Path("runs") / f"{cfg['model']}_{cfg['method']}_seed{cfg['seed']}")
    train_set, test_set = open_data(cfg["data"], cfg["seed"], cfg["limit_train"])
    device = setup_runtime(args, d)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    random.seed(cfg["seed"])
    model = build_model(cfg["model"], train_set.num_classes, cfg["method"]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    imagenet = is_imagefolder(cfg["data"]) if cfg["data"] is not None else False
    optimizer = make_optimizer(model, cfg["lr"], cfg["momentum"], cfg["weight_decay"], decay_binary=not imagenet)
    E = cfg["epochs"]
    scheduler = make_scheduler(optimizer, E, cfg["warmup"])
    start, history = 0, []
    if ckpt is not None:
        if ckpt["data_state"]["world_size"] != d.world_size and d.main:
            print(f"erbnn train: warning: resuming a {ckpt['data_state']['world_size']}-rank run on "
                  f"{d.world_size} ranks: the data order differs from an uninterrupted run", file=sys.stderr)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start, history = int(ckpt["epoch"]), list(ckpt.get("history", []))
    net = model
    if d.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=True)

    per_rank = cfg["batch_size"] // d.world_size
    train_loader = make_loader(train_set, per_rank, True, cfg["seed"], d.rank, d.world_size, args.workers)
    test_loader = make_loader(test_set, per_rank, False, cfg["seed"], d.rank, d.world_size, args.workers)
    stop = min(args.stop_after or E, E)
    progress = d.main and not args.no_progress
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    config = dict(cfg, world_size=d.world_size, device=str(device), backend=_backend.get_backend(), amp=args.amp,
                  channels_last=args.channels_last, decay_binary=not imagenet)
    for epoch in range(start, stop):
        t0 = time.perf_counter()
        sched = epoch_schedules(model, epoch, E, (cfg["p0"], cfg["p1"]))
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        tr_loss, tr_acc, tr_n = train_one_epoch(net, train_loader, optimizer, device, d,
                                                desc=f"epoch {epoch + 1}/{E}", progress=progress, amp=args.amp,
                                                scaler=scaler, channels_last=args.channels_last)
        scheduler.step()
        if d.enabled:
            broadcast_buffers(model)
        te_loss, te_acc, te_n = evaluate(model, test_loader, device, d, amp=args.amp,
                                         channels_last=args.channels_last)
        row = {"epoch": epoch + 1, "lr": lr, **sched, "train_loss": tr_loss, "train_acc": tr_acc,
               "test_loss": te_loss, "test_acc": te_acc, "epoch_time_s": time.perf_counter() - t0,
               "train_samples": tr_n, "test_samples": te_n}
        history.append(row)
        if d.main:
            print(epoch_line(row, E, sched), flush=True)
            save_atomic({"arch": cfg["model"], "method": cfg["method"], "num_classes": train_set.num_classes,
                         "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(),
                         "data_state": {"seed": cfg["seed"], "epoch": epoch + 1, "world_size": d.world_size},
                         "args": cfg, "history": history,
                         "scaler": scaler.state_dict() if scaler is not None else None}, out / CHECKPOINT)
            write_metrics(out, history, config)
            plot(out, history, f"{cfg['model']} ({cfg['method']}), seed {cfg['seed']}")
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
    device = setup_runtime(args, d)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")
    _, test_set = open_data(args.data if args.data is not None else ckpt["args"].get("data"))
    model = build_model(ckpt["arch"], ckpt.get("num_classes", 10), ckpt.get("method", "erbnn"))
    model.load_state_dict(ckpt["model"])
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    loader = make_loader(test_set, args.batch_size, False, workers=args.workers)
    loss, top1, n = evaluate(model, loader, device, amp=args.amp, channels_last=args.channels_last)
    return {"checkpoint": str(checkpoint_path(args.checkpoint)), "data": test_set.name, "top1": top1,
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
