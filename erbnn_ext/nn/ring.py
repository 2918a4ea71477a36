"""A ring buffer of the last `size` scalars kept in module buffers, averaged over the filled entries.

The buffers are the only state (state_dict, .to() and in-place edits all take effect). Push and mean run
on the tensors' device without a host sync; unfilled slots hold 0, so the mean is the sum divided by
the fill count.
"""
import torch

from .._common import ring_mean, ring_push
from .state import Float64State


class RingMean(Float64State):
    def __init__(self, size: int, dtype=torch.float64):
        super().__init__()
        if size < 1:
            raise ValueError(f"ring buffer size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("values", torch.zeros(size, dtype=dtype))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # pushes so far

    @torch.no_grad()
    def push(self, value: torch.Tensor) -> None:
        ring_push(self.values, self.count, value)

    @property
    def filled(self) -> int:
        """Entries filled so far (reads the count buffer: a host sync on CUDA; not for the hot path)."""
        return min(int(self.count), self.size)

    def mean(self) -> torch.Tensor:
        """Mean of the filled entries (0-dim); 0 when empty."""
        return ring_mean(self.values, self.count)

    def extra_repr(self):
        return f"size={self.size}"
