"""RPReLU (ReActNet): y = PReLU(x + b1) + b2 with per-channel shifts b1, b2 and per-channel slope."""
import torch


class RPReLU(torch.nn.Module):
    """y = PReLU(x + b1) + b2 over channel dim 1; b1, b2 start at 0, the slope at `init`."""

    def __init__(self, channels: int, init: float = 0.25):
        super().__init__()
        self.shift_in = torch.nn.Parameter(torch.zeros(channels))
        self.prelu = torch.nn.PReLU(channels, init=init)
        self.shift_out = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.shift_in.numel():
            raise ValueError(f"RPReLU({self.shift_in.numel()}) expects [N, {self.shift_in.numel()}, ...], "
                             f"got {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.prelu(x + self.shift_in.view(shape)) + self.shift_out.view(shape)
