"""fit(): the training recipe (method.md section 5) as a Python call, for any model and any loaders.

    model = binarize_(torchvision.models.resnet18(num_classes=10))     # or erbnn_ext.models.resnet20_1w1a()
    result = fit(model, train_loader, val_loader, epochs=200, lr=0.1, weight_decay=1e-4, warmup=5,
                 out="runs/mine")                                        # checkpoint + metrics each epoch
    fit(model, train_loader, val_loader, epochs=200, out="runs/mine", resume="runs/mine")  # continues

`erbnn train` builds its model and loaders and calls this function.
"""
import time
import warnings
from pathlib import Path

import torch

from .._extras import available, install_hint
from ..cpu_allocator import keep_freed_memory
from .checkpoint import CHECKPOINT, RESUME_KEYS, load_state, prepare_out, read_checkpoint, rng_state, \
    save_atomic, set_rng_state
from .dist import Dist, broadcast_buffers, is_lost_peer, lost_ranks
from .errors import CheckpointError, RankLostError, UsageError
from .loop import evaluate, train_one_epoch
from .metrics import epoch_line, plot, write_metrics
from .recipe import epoch_schedules, make_optimizer, make_scheduler, warmup_warning


def _set_loader_epoch(loader, epoch):
    """BatchLoader has set_epoch; a DataLoader over a DistributedSampler has it on its sampler."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
            return


def _default_device(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _resume(resume, model, optimizer, scheduler, scaler, d, warn):
    """Load a checkpoint (file, folder or dict) into model, optimizer, scheduler, the fp16 grad scaler and
    the RNGs; returns the epochs done and the history so far."""
    ckpt = resume if isinstance(resume, dict) else read_checkpoint(resume, RESUME_KEYS)
    where = getattr(ckpt, "path", "the resume checkpoint")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where}: cannot resume: missing {', '.join(map(repr, missing))}")
    saved_ws = ckpt.get("data_state", {}).get("world_size", d.world_size)
    if saved_ws != d.world_size and d.main:
        warn(f"resuming a {saved_ws}-rank run on {d.world_size} ranks: the data order differs from an "
             f"uninterrupted run")
    load_state(model, ckpt["model"], "model", where)
    load_state(optimizer, ckpt["optimizer"], "optimizer", where)
    load_state(scheduler, ckpt["scheduler"], "scheduler", where)
    set_rng_state(ckpt["rng"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["epoch"]), list(ckpt["history"])


def _save(out, meta, data_state, epochs_done, model, optimizer, scheduler, scaler, history, world_size):
    save_atomic({**meta, "epoch": epochs_done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "data_state": {**data_state, "epoch": epochs_done, "world_size": world_size},
                 "history": history, "scaler": scaler.state_dict() if scaler is not None else None},
                out / CHECKPOINT)


def fit(model: torch.nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float = 0.1,
        momentum: float = 0.9, weight_decay: float = 1e-4, warmup: int = 17, percentile=(0.8, 0.0),
        optimizer=None, out=None, resume=None, stop_after=None, device=None, distributed=None,
        progress: bool = False, meta=None, config=None, title=None, log=print, on_warning=None, amp=None,
        channels_last: bool = False) -> dict:
    """Train `model` with the ER-BNN recipe; returns {"model", "history" (one dict per epoch), "out"}.

    train_loader / val_loader: iterables of (x, y) batches (a DataLoader, erbnn_ext.data.BatchLoader, ...);
      set_epoch(epoch) is called on the loader or its sampler each epoch when it has one. val_loader None:
      no test metrics.
    Recipe: SGD(lr, momentum, weight_decay) unless `optimizer` is given; per epoch the learning rate factor
      lr_factor(epoch, epochs, warmup) (linear warm-up, then cosine) and every binarizer schedule: ER-BNN's
      percentile p goes linearly from percentile[0] to percentile[1] over `epochs`.
    out: a folder for checkpoint.pt, metrics.csv, metrics.json and curves.png, rewritten after every epoch
      (atomically; rank 0 only); None writes nothing.
    resume: a checkpoint file or folder written by fit / `erbnn train` (or its loaded dict): model,
      optimizer, scheduler, RNG state and history are restored and training continues at its epoch.
    stop_after: stop once this many epochs in total are done (the schedules still span `epochs`).
    device: where batches go (default: the model's parameters' device; the model is moved there).
    distributed: wrap in DistributedDataParallel and all-reduce the metrics (default: when a process group
      of more than one rank is initialised); the loaders must then give each rank its own shard.
    meta: extra entries for the checkpoint (e.g. {"arch": ..., "args": ...}; "data_state" is completed
      with the epoch and world size). config: the "config" of metrics.json (default: the recipe).
    log: called with one line per epoch (None: silent). on_warning: called with each warning's text
      (default: warnings.warn).
    amp: "bf16" or "fp16" runs forward and loss under torch.autocast in that dtype (fp16: CUDA only, with a
      GradScaler whose state the checkpoint keeps); channels_last: model and batches in channels-last.
    Errors: TrainingError subclasses (erbnn_ext.training.errors): CheckpointError, OutputError (an
      unwritable folder or a full disk; the previous files are kept), NonFiniteError (a NaN/inf loss, with
      its epoch and step).
    """
    warn = on_warning or (lambda m: warnings.warn(m, stacklevel=3))
    keep_freed_memory()  # no page faults per step from glibc's heap trimming (cpu_allocator.py)
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1, got {epochs}")
    if stop_after is not None and stop_after > epochs:
        raise UsageError(f"stop_after {stop_after} exceeds epochs {epochs}")
    d = Dist.current()
    if distributed is None:
        distributed = d.enabled
    elif not distributed:
        d = Dist.single()
    device = torch.device(device) if device is not None else _default_device(model)
    if amp not in (None, "bf16", "fp16"):
        raise UsageError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("amp='fp16' needs a CUDA device (use 'bf16' on the CPU)")
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if optimizer is None:
        optimizer = make_optimizer(model, lr, momentum, weight_decay)
    scheduler = make_scheduler(optimizer, epochs, warmup)
    start, history = (_resume(resume, model, optimizer, scheduler, scaler, d, warn) if resume is not None
                      else (0, []))
    msg = warmup_warning(epochs, warmup)
    if msg and d.main and start < epochs:
        warn(msg)
    out = Path(out) if out is not None else None
    if out is not None and d.main:
        prepare_out(out)
    can_plot = out is not None and d.main and available("matplotlib")
    if out is not None and d.main and not can_plot:
        warn(f"curves.png is not written: matplotlib is not installed ({install_hint('matplotlib', 'train')})")
    net = model
    if distributed:
        # Buffers (the ER rings, BatchNorm statistics) are broadcast from rank 0 before each forward: the
        # default of torch 2.11 to 2.14 (2.14 renames the switch, so it is left at its default).
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    meta = dict(meta or {})
    data_state = dict(meta.pop("data_state", {}))
    config = config if config is not None else {"epochs": epochs, "lr": lr, "momentum": momentum,
                                                "weight_decay": weight_decay, "warmup": warmup,
                                                "percentile": list(percentile), "world_size": d.world_size}
    stop = min(stop_after or epochs, epochs)
    progress_state = {"epoch": start, "saved": start if resume is not None else None}
    try:
        _epochs(net, model, train_loader, val_loader, optimizer, scheduler, scaler, device, d, distributed, amp,
                channels_last, epochs, start, stop, percentile, progress, log, out, meta, data_state, history,
                config, title, can_plot, progress_state)
    except Exception as e:
        if distributed and is_lost_peer(e):
            raise RankLostError(_lost_message(e, d, out, progress_state)) from e
        raise
    return {"model": model, "history": history, "out": out}


def _lost_message(exc, d, out, state):
    lost = lost_ranks(d)
    who = (f"rank {', '.join(map(str, lost))} of {d.world_size}" if lost
           else f"another rank of {d.world_size}")
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.split("] ", 1)[-1].split(". ")[0]  # gloo's "[file:line] Connection closed by peer [addr]"
    msg = f"{who} was lost in epoch {state['epoch'] + 1} ({reason}); rank {d.rank} stops."
    if out is None:
        return msg + " No checkpoint is written without an output folder."
    ckpt = Path(out) / CHECKPOINT
    if not ckpt.exists():
        return msg + f" No checkpoint was written yet ({ckpt})."
    epoch = f" (epoch {state['saved']})" if d.main and state["saved"] is not None else ""
    return (msg + f" The last checkpoint, {ckpt}{epoch}, is intact (written whole or not at all): resume from "
                  f"it, e.g. erbnn train --resume {out}")


def _epochs(net, model, train_loader, val_loader, optimizer, scheduler, scaler, device, d, distributed, amp,
            channels_last, epochs, start, stop, percentile, progress, log, out, meta, data_state, history, config,
            title, can_plot, state):
    for epoch in range(start, stop):
        state["epoch"] = epoch
        t0 = time.perf_counter()
        sched = epoch_schedules(model, epoch, epochs, percentile)
        lr_now = optimizer.param_groups[0]["lr"]
        _set_loader_epoch(train_loader, epoch)
        tr_loss, tr_acc, tr_n = train_one_epoch(net, train_loader, optimizer, device, d, epoch=epoch,
                                                desc=f"epoch {epoch + 1}/{epochs}", progress=progress and d.main,
                                                amp=amp, scaler=scaler, channels_last=channels_last)
        scheduler.step()
        if distributed:
            broadcast_buffers(model)
        row = {"epoch": epoch + 1, "lr": lr_now, **sched, "train_loss": tr_loss, "train_acc": tr_acc}
        if val_loader is not None:
            te_loss, te_acc, te_n = evaluate(model, val_loader, device, d, amp=amp, channels_last=channels_last)
            row.update(test_loss=te_loss, test_acc=te_acc)
        row.update(epoch_time_s=time.perf_counter() - t0, train_samples=tr_n)
        if val_loader is not None:
            row["test_samples"] = te_n
        history.append(row)
        if d.main:
            if log is not None:
                log(epoch_line(row, epochs, sched))
            if out is not None:
                _save(out, meta, data_state, epoch + 1, model, optimizer, scheduler, scaler, history, d.world_size)
                state["saved"] = epoch + 1
                write_metrics(out, history, config)
                if can_plot:
                    plot(out, history, title or type(model).__name__)
    state["epoch"] = stop - 1
    if distributed:
        torch.distributed.barrier()
