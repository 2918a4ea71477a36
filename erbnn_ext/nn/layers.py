"""ER-BNN binary layers: weight restoration + activation restoration + conv / linear (method.md 1-3)."""
import torch
import torch.nn.functional as F

from .. import _backend, functional as EF, ops
from ..reference import EPS
from .approx_sign import ApproxSign
from .ring import RingMean


class _Restoration:
    """Shared by ERBinaryConv2d and ERBinaryLinear: the two ApproxSign modules (weights, activations) and
    the ring buffers of the batch activation statistics used in eval."""

    def _init_restoration(self, q_buffer: int, stat_buffer: int):
        self.weight_sign = ApproxSign(q_buffer)
        self.act_sign = ApproxSign(q_buffer)
        self.act_mean = RingMean(stat_buffer)
        self.act_sigma = RingMean(stat_buffer)
        self._packed_cache = None  # (key, packed W_b, mu as float, sigma tensor, mu tensor)

    def restored_weight(self) -> torch.Tensor:
        """W_b = sign((W - mean) / alpha) per output channel, with the surrogate gradient of width
        weight_sign.b; in training also measures q on What."""
        b = self.weight_sign.step_width(self.weight)
        w_b, mean, alpha = EF.restore_weight(self.weight, b)
        if self.weight_sign.measuring:
            with torch.no_grad():
                shape = (-1,) + (1,) * (self.weight.dim() - 1)
                what = (self.weight - mean.view(shape)) / alpha.clamp_min(EPS).view(shape)
                self.weight_sign.observe(what)
        self.weight_sign.fill_step_width(b)  # b of this step includes this step's q (method.md 3)
        return w_b

    def running_stats(self):
        """(mean, sigma) averaged over the recorded training steps, or None before any step."""
        if self.act_mean.filled == 0:
            return None
        return self.act_mean.mean(), self.act_sigma.mean()

    def _use_xnor(self, x: torch.Tensor) -> bool:
        """Eval inference (no grad) on the native backend with recorded statistics runs the packed
        XNOR-popcount kernel instead of the float conv of the restored values."""
        return (not self.training and not torch.is_grad_enabled() and self.act_mean.filled > 0
                and _backend.native_active() and ops.has_kernel("binary_conv2d_packed", x.device.type))

    def _packed_state(self, weight4d: torch.Tensor):
        """Weights packed once per weight version and statistics update (not per call)."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.act_mean._host_count)
        if self._packed_cache is None or self._packed_cache[0] != key:
            w_b = EF.restore_weight(weight4d)[0]
            mu, sigma = (t.float().reshape(1) for t in self.running_stats())
            self._packed_cache = (key, ops.pack_conv_weight(w_b), float(mu), sigma, mu)
        return self._packed_cache[1:]

    def _xnor_forward(self, x4d, stride, padding, dilation, weight4d):
        """sigma * bconv(sign(x - mu), W_b) + mu * conv(1, W_b) + bias (zero padding), exactly the
        eval-mode float path up to float rounding (method.md section 2)."""
        packed, mu_f, sigma, mu = self._packed_state(weight4d)
        return ops.binary_conv2d_packed(x4d, packed, stride, padding, dilation, x_shift=mu_f, out_scale=sigma,
                                        out_bias=self.bias, ones_scale=mu)

    def restored_input(self, x: torch.Tensor) -> torch.Tensor:
        """y = sigma * sign((x - mu) / sigma) + mu: batch statistics in training (recorded in the ring
        buffers), their running means in eval (batch statistics if training never ran)."""
        stats = None if self.training else self.running_stats()
        if stats is not None:
            return EF.restore_activation(x, self.act_sign.b.clone(), stats=stats)[0]
        b = self.act_sign.step_width(x)
        y, mean, sigma = EF.restore_activation(x, b)
        if self.act_sign.measuring:
            self.act_mean.push(mean)
            self.act_sigma.push(sigma)
            with torch.no_grad():
                self.act_sign.observe((x.detach() - mean) / sigma.clamp_min(EPS))
        self.act_sign.fill_step_width(b)
        return y


class ERBinaryConv2d(torch.nn.Conv2d, _Restoration):
    """nn.Conv2d with ER-BNN restoration of weights and input (1W1A), groups = 1.

    Forward: conv2d(sigma * sign(xhat) + mu, sign(What)) where What = (W - mean_o) / alpha_o per output
    channel and xhat = (x - mu) / sigma with the batch statistics (training) or their running means over
    the last `stat_buffer` training steps (eval). Backward: tanh surrogates of adaptive width (ApproxSign)
    and gradients through all statistics (method.md sections 1-3).

    Same `weight` Parameter and state_dict keys as nn.Conv2d, plus the buffers of weight_sign, act_sign,
    act_mean and act_sigma. In eval mode under no_grad with the native backend it runs the XNOR-popcount
    kernel on weights packed once (float32 output equal to the float path up to rounding).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=False,
                 q_buffer=100, stat_buffer=1000, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=1, bias=bias, device=device, dtype=dtype)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("ERBinaryConv2d supports numeric zero padding only")
        self._init_restoration(q_buffer, stat_buffer)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input [N, {self.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        if self._use_xnor(x):
            return self._xnor_forward(x, self.stride, self.padding, self.dilation, self.weight)
        w_b = self.restored_weight()
        y = self.restored_input(x)
        return F.conv2d(y, w_b, self.bias, self.stride, self.padding, self.dilation)


class ERBinaryLinear(torch.nn.Linear, _Restoration):
    """nn.Linear with ER-BNN restoration of weights and input (1W1A); see ERBinaryConv2d."""

    def __init__(self, in_features, out_features, bias=False, q_buffer=100, stat_buffer=1000,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_restoration(q_buffer, stat_buffer)

    def forward(self, x):
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects input [N, ..., {self.in_features}], "
                             f"got {tuple(x.shape)}")
        if self._use_xnor(x):
            out = self._xnor_forward(x.reshape(-1, self.in_features, 1, 1), (1, 1), (0, 0), (1, 1),
                                     self.weight[:, :, None, None])
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(self.restored_input(x), self.restored_weight(), self.bias)
