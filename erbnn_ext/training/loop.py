"""One training epoch and one evaluation pass: the readable page of the recipe."""
import sys

import torch
import torch.nn.functional as F


def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def autocast(device, amp):
    """torch.autocast for --amp ("bf16", "fp16" or None: disabled)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp is not None)


def train_one_epoch(model, loader, optimizer, device, d, desc="train", progress=False, amp=None, scaler=None,
                    channels_last=False):
    """One pass over loader; returns (mean loss, top-1 %, samples) over all ranks of d (a Dist or None).
    amp: autocast dtype ("bf16" / "fp16" / None); scaler: a torch.amp.GradScaler (fp16) or None."""
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
    bar = _progress(loader, len(loader), desc, progress)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)
            loss = F.cross_entropy(out, y)
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
    for x, y in _progress(loader, len(loader), desc, progress):
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
