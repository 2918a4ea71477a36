"""ApproxSign: ER-BNN's adaptive-distribution gradient (method.md section 3) as a module."""
import torch

from .. import functional as EF
from .ring import RingMean
from .state import Float64State


class ApproxSign(Float64State):
    """sign(x) forward; tanh surrogate backward whose width follows the data.

    Forward: sign(x) (+1 for x >= 0). Backward: dL/dx = g * (h / b) * (1 - tanh(x / b)^2), h = max(b, 1).
    In training (with grad enabled, non-empty input) each call measures q = two_sided_quantile(x, p)
    and pushes it into a ring buffer of the last `buffer_size` values; b = max(mean(filled q), min_width).
    The ER layers (ERBinaryConv2d / ERBinaryLinear) hold two of these as the state of their weight and
    activation signs and measure q inside their fused training ops instead.

    State lives in buffers only: p (float64), b (float64, the current width) and the q ring; editing them
    in place (``s.p.fill_(0.8)``), load_state_dict and .to(device) all take effect; .to(dtype) leaves
    them float64 (nn.state.Float64State).

    Args: buffer_size: q values averaged (100 in the paper); p: the percentile (set per epoch with
    set_percentile / PercentileSchedule); min_width: the floor of b (0.1 in the paper).

    Example::

        s = ApproxSign(); s.p.fill_(0.8); y = s(x)

    Reference: Zeng et al., Efficient Restoration for Binary Neural Networks, Acta Electronica Sinica 2025.
    """

    def __init__(self, buffer_size: int = 100, p: float = 1.0, min_width: float = 0.1):
        super().__init__()
        self.min_width = float(min_width)
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float64))
        self.register_buffer("b", torch.tensor(1.0, dtype=torch.float64))  # current width
        self.q = RingMean(buffer_size)

    def set_percentile(self, p: float) -> None:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"percentile p must be in [0, 1], got {p}")
        self.p.fill_(p)

    @property
    def measuring(self) -> bool:
        """Whether a call measures q: training mode with grad enabled."""
        return self.training and torch.is_grad_enabled()

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Measure q on x and update the width b (the standalone module's path; reads p on the host)."""
        if x.numel() == 0:
            return
        self.q.push(EF.two_sided_quantile(x, float(self.p)))
        # Item assignment, not copy_: torch 2.11's compiled graphs drop in-place copy_ into 0-dim float64
        # buffers.
        self.b[...] = self.q.mean().clamp_min(self.min_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.measuring:
            self.observe(x)
        return EF.approx_sign(x, self.b)  # as_width copies: this step's width, whatever later steps do

    def extra_repr(self):
        return f"p={float(self.p):g}, min_width={self.min_width:g}"
