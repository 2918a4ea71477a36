"""One training epoch and one evaluation pass: the readable page of the recipe."""
import sys

import torch
import torch.nn.functional as F

from .errors import NonFiniteError


def _progress(it, desc, enabled):
    from .._extras import available

    if not enabled or not available("tqdm"):  # no bar without the extra: the per-epoch line stays
        return it
    from tqdm import tqdm
    return tqdm(it, total=len(it) if hasattr(it, "__len__") else None, desc=desc, leave=False,
                dynamic_ncols=True, file=sys.stderr)


def autocast(device, amp):
    """torch.autocast for --amp ("bf16", "fp16" or None: disabled)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp is not None)


def _where(epoch, step, loader):
    total = f" of {len(loader)}" if hasattr(loader, "__len__") else ""
    return (f"epoch {epoch + 1}, " if epoch is not None else "") + f"step {step + 1}{total}"


def _check_finite(loss, model, epoch, step, loader):
    """One host sync per step: stop at the first non-finite loss, before it reaches the weights."""
    if not torch.isfinite(loss.detach()):
        raise NonFiniteError(f"training stopped: the loss is {loss.item()} at {_where(epoch, step, loader)} "
                             f"(diverged; try a lower learning rate)")


def train_one_epoch(model, loader, optimizer, device, d=None, desc="train", progress=False, epoch=None,
                    amp=None, scaler=None, channels_last=False):
    """One pass over loader (cross-entropy, then optimizer.step per batch); returns (mean loss, top-1 %,
    samples) summed over the ranks of d (a Dist, or None for one process). A non-finite loss raises
    NonFiniteError naming the epoch (0-based `epoch`, printed 1-based) and the step.
    amp: autocast dtype ("bf16" / "fp16" / None); scaler: a torch.amp.GradScaler (fp16) or None."""
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
    bar = _progress(loader, desc, progress)
    progress = bar is not loader  # a bar exists (tqdm installed)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        try:
            with autocast(device, amp):
                out = model(x)
        except RuntimeError as e:
            if any(not torch.isfinite(p).all() for p in model.parameters()):
                raise NonFiniteError(f"training stopped: the parameters are no longer finite at "
                                     f"{_where(epoch, step, loader)} (diverged; try a lower learning rate)") from e
            raise
        loss = F.cross_entropy(out.float(), y)
        _check_finite(loss, model, epoch, step, loader)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * y.numel(), (out.argmax(1) == y).sum().double(),
                                 torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
        if progress and step % 5 == 0:
            bar.set_postfix(loss=f"{sums[0].item() / max(sums[2].item(), 1):.3f}",
                            acc=f"{100 * sums[1].item() / max(sums[2].item(), 1):.1f}")
    if d is not None:
        d.all_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, int(sums[2].item())


@torch.no_grad()
def evaluate(model, loader, device, d=None, progress=False, desc="test", amp=None, channels_last=False):
    """(mean loss, top-1 %, samples) of model in eval mode over loader, summed over the ranks of d."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in _progress(loader, desc, progress):
        x, y = x.to(device, memory_format=fmt), y.to(device)
        with autocast(device, amp):
            out = model(x)
        sums[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum().double()
        sums[2] += y.numel()
    if d is not None:
        d.all_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, int(sums[2].item())
