"""RPReLU (ReActNet): y = PReLU(x + b1) + b2 with per-channel shifts b1, b2 and per-channel slope."""
import torch


class RPReLU(torch.nn.Module):
    """y = PReLU(x + b1) + b2 over channel dim 1; b1, b2 start at 0, the slope at `init`.

    PReLU(z) is computed as relu(z) - slope * relu(-z): the same bits as torch's prelu (slope * z exactly
    where z < 0), but a much cheaper backward on the CPU than torch's prelu backward (a training step's
    RPReLU, benchmarks.train_step's model step). The
    one difference: at z == 0 exactly the input gradient is 0 (relu's convention), not slope * g. The
    parameters stay those of nn.PReLU (state_dict keys unchanged)."""

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
        z = x + self.shift_in.view(shape)
        slope = self.prelu.weight
        slope = slope.view(shape) if slope.numel() > 1 else slope.reshape(())
        return torch.relu(z) - slope * torch.relu(-z) + self.shift_out.view(shape)
