"""A ring buffer of the last `size` scalars kept in module buffers, averaged over the filled entries.

Push and mean run on the tensor's device without a host sync: unfilled slots hold 0, so the mean is the
sum divided by the fill count (a genuine 0.0 value is kept, unlike "average the non-zero entries").
"""
import torch


class RingMean(torch.nn.Module):
    def __init__(self, size: int, dtype=torch.float64):
        super().__init__()
        if size < 1:
            raise ValueError(f"ring buffer size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("values", torch.zeros(size, dtype=dtype))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # pushes so far
        self._host_count = 0  # mirror of `count` so callers can branch without a device sync

    @torch.no_grad()
    def push(self, value: torch.Tensor) -> None:
        slot = torch.remainder(self.count, self.size).reshape(1)
        self.values.index_copy_(0, slot, value.detach().reshape(1).to(self.values.dtype))
        self.count.add_(1)
        self._host_count += 1

    @property
    def filled(self) -> int:
        return min(self._host_count, self.size)

    def mean(self) -> torch.Tensor:
        """Mean of the filled entries (0-dim); 0 when empty."""
        return self.values.sum() / self.count.clamp(1, self.size).to(self.values.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "count"
        if key in state_dict:
            self._host_count = int(state_dict[key])

    def extra_repr(self):
        return f"size={self.size}"
