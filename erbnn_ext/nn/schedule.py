"""The percentile schedule of method.md section 3: p falls linearly from p0 to p1 over training."""
import torch

from .approx_sign import ApproxSign


def set_percentile(model: torch.nn.Module, p: float) -> int:
    """Set p on every ApproxSign in model; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, ApproxSign):
            m.set_percentile(p)
            n += 1
    return n


class PercentileSchedule:
    """p(epoch) = p0 - (p0 - p1) * epoch / epochs (p0 = 0.8, p1 = 0.0 in the paper); call step(model, epoch)
    once per epoch."""

    def __init__(self, p0: float = 0.8, p1: float = 0.0, epochs: int = 1000):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        for name, v in (("p0", p0), ("p1", p1)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.p0, self.p1, self.epochs = float(p0), float(p1), int(epochs)

    def __call__(self, epoch: int) -> float:
        return self.p0 - (self.p0 - self.p1) * min(max(epoch, 0), self.epochs) / self.epochs

    def step(self, model: torch.nn.Module, epoch: int) -> float:
        p = self(epoch)
        set_percentile(model, p)
        return p


def set_epoch(model: torch.nn.Module, epoch: int, epochs: int, p0: float = 0.8, p1: float = 0.0) -> dict:
    """Update every per-epoch schedule in model at the start of `epoch` (0-based) of `epochs`: p of each
    ApproxSign (PercentileSchedule(p0, p1, epochs), ER-BNN) and set_epoch(epoch, epochs) of every module
    that defines it (t of IR-Net's EDE, tau of ReCU: nn.ablations). Returns the values set, by module
    class attribute name, e.g. {"p": 0.8} or {"t": 0.001}: the keys present depend on the model."""
    values = {}
    if any(isinstance(m, ApproxSign) for m in model.modules()):
        values["p"] = PercentileSchedule(p0, p1, epochs).step(model, epoch)
    for m in model.modules():
        fn = getattr(m, "set_epoch", None)
        if m is not model and callable(fn):
            v = fn(epoch, epochs)
            key = "tau" if hasattr(m, "tau") else "t"
            values.setdefault(key, v)
    return values
