"""ApproxSign: ER-BNN's adaptive-distribution gradient (method.md section 3) as a module."""
import torch

from .. import functional as EF, reference
from .ring import RingMean


class ApproxSign(torch.nn.Module):
    """sign(x) forward; tanh surrogate backward whose width follows the data.

    Forward: sign(x) (+1 for x >= 0). Backward: dL/dx = g * (h / b) * (1 - tanh(x / b)^2), h = max(b, 1).
    In training (with grad enabled) each call measures q = two_sided_quantile(x, p) under no_grad and
    pushes it into a ring buffer of the last `buffer_size` values; b = max(mean(filled q), min_width).
    State (p, the q ring buffer, b) lives in buffers: state_dict and .to(device) carry it.

    Args: buffer_size: q values averaged (100 in the paper); p: the percentile (set per epoch with
    set_percentile / PercentileSchedule); min_width: the floor of b (0.1 in the paper).

    Example::

        s = ApproxSign(); s.p.fill_(0.8); y = s(x)

    Reference: Zeng et al., Efficient Restoration for Binary Neural Networks, Acta Electronica Sinica 2025.
    """

    def __init__(self, buffer_size: int = 100, p: float = 1.0, min_width: float = 0.1):
        super().__init__()
        self.min_width = float(min_width)
        self.register_buffer("p", torch.tensor(float(p)))
        self.register_buffer("b", torch.tensor(1.0, dtype=torch.float64))  # current width
        self.q = RingMean(buffer_size)
        self._p_host = float(p)  # mirror of p: the quantile op takes a host float (no device sync)

    def set_percentile(self, p: float) -> None:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"percentile p must be in [0, 1], got {p}")
        self.p.fill_(p)
        self._p_host = p

    @property
    def measuring(self) -> bool:
        """Whether the next call measures q: training mode with grad enabled."""
        return self.training and torch.is_grad_enabled()

    @torch.no_grad()
    def observe(self, xhat: torch.Tensor) -> None:
        """Measure q on the standardised values xhat and update the width b."""
        if xhat.numel() == 0:
            return
        self.q.push(EF.two_sided_quantile(xhat, self._p_host))
        self.b.copy_(self.q.mean().clamp_min(self.min_width))

    def step_width(self, like: torch.Tensor) -> torch.Tensor:
        """A fresh 0-dim tensor for this step's width: the layers pass it to the restoration functions
        (whose forward does not read b) and fill it with fill_step_width once q of this step is in."""
        return torch.empty((), dtype=reference.acc_dtype(like.dtype), device=like.device)

    @torch.no_grad()
    def fill_step_width(self, b_step: torch.Tensor) -> None:
        b_step.copy_(self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.measuring:
            self.observe(x)
        return EF.approx_sign(x, self.b.clone())  # this step's width, whatever later steps do to b

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "p" in state_dict:
            self._p_host = float(state_dict[prefix + "p"])

    def extra_repr(self):
        return f"p={self._p_host:g}, min_width={self.min_width:g}"
