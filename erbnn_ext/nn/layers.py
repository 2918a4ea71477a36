"""ER-BNN binary layers: weight restoration + activation restoration + conv / linear (method.md 1-3).

A training step runs one fused op per layer side (ops.restore_weight_train / restore_activation_train:
restoration, this step's quantile, ring pushes and the width update, all on the module's buffers);
eval under no_grad on the native backend, and a training step's forward conv, run the packed
XNOR-popcount conv. Each forward follows nn.routing.route(self, x), the one place that decides.
"""
import copy

import torch
import torch.nn.functional as F

from .. import functional as EF, ops
from .approx_sign import ApproxSign
from .ring import RingMean
from .routing import AMP_STEPS, ER_STEP, NHWC, RESTORED_POPCOUNT, XNOR_EVAL, lean_train, route


def running_stats(act_mean: RingMean, act_sigma: RingMean):
    """(mean, sigma) of the recorded batch statistics, 0-dim float64. Before any training step they are
    (0, 1), as BatchNorm's initial running statistics (no host branch: compile-friendly)."""
    sigma = act_sigma.mean()
    return act_mean.mean(), torch.where(act_sigma.count > 0, sigma, torch.ones_like(sigma))


def check_binary_conv_config(conv: torch.nn.Conv2d) -> None:
    """The binary convs support groups=1 and numeric zero padding only (checked at construction and in
    forward, so a value set after construction is refused too)."""
    if conv.groups != 1:
        raise ValueError(f"{type(conv).__name__} supports groups=1 only, got groups={conv.groups}")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{type(conv).__name__} supports numeric zero padding only, got "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")


class _Restoration:
    """Shared by ERBinaryConv2d and ERBinaryLinear: the two ApproxSign modules (weights, activations: p,
    width b and the q ring) and the rings of the batch activation statistics used in eval. Buffers are
    the only state."""

    def _init_restoration(self, q_buffer: int, stat_buffer: int):
        self.weight_sign = ApproxSign(q_buffer)
        self.act_sign = ApproxSign(q_buffer)
        self.act_mean = RingMean(stat_buffer)
        self.act_sigma = RingMean(stat_buffer)

    def _weight_state(self):
        """weight_sign's (p, q values, q count, width, min_width): the state arguments of the weights'
        training op, read from the buffer dicts (nn.Module.__getattr__ costs about 0.5 us per lookup, 10 us
        per step over both sides' tuples)."""
        s = self._modules["weight_sign"]
        b, q = s._buffers, s._modules["q"]._buffers
        return b["p"], q["values"], q["count"], b["b"], s.min_width

    def _act_state(self):
        """act_sign's (p, q values, q count, width) and the statistics rings, then min_width: the state
        arguments of the activations' training op (as _weight_state)."""
        s = self._modules["act_sign"]
        b, q = s._buffers, s._modules["q"]._buffers
        m, v = self._modules["act_mean"]._buffers, self._modules["act_sigma"]._buffers
        return b["p"], q["values"], q["count"], b["b"], m["values"], m["count"], v["values"], v["count"], s.min_width

    def _measuring(self, x: torch.Tensor) -> bool:
        # An empty batch changes no state (no quantile, no statistics push).
        return self.training and torch.is_grad_enabled() and x.numel() > 0

    def restored_weight(self, measure: bool = False) -> torch.Tensor:
        """W_b = sign((W - mean) / alpha) per output channel with the surrogate gradient; with `measure`
        (a training step) this step's q on What enters weight_sign's ring and width first."""
        if measure:
            return EF.restore_weight_train(self.weight, *self._weight_state())[0]
        return EF.restore_weight(self.weight, self.weight_sign.b)[0]

    def running_stats(self):
        """(mean, sigma) averaged over the recorded training steps (see running_stats below)."""
        return running_stats(self.act_mean, self.act_sigma)

    def restored_input(self, x: torch.Tensor, measure: bool = False) -> torch.Tensor:
        """y = sigma * sign((x - mu) / sigma) + mu: batch statistics in training (with `measure`, pushed
        into the rings together with this step's q), their running means in eval."""
        return self._restore_input(x, measure)[0]

    def _restore_input(self, x, measure):
        """(y, mu, sigma) of restored_input."""
        if measure:
            return EF.restore_activation_train(x, *self._act_state())
        b = self.act_sign.b
        if self.training:  # no grad, or an empty batch: batch statistics, no state change
            return EF.restore_activation(x, b)
        return EF.restore_activation(x, b, stats=self.running_stats())

    def _xnor_forward(self, x4d, stride, padding, dilation, weight4d):
        """sigma * bconv(sign(x - mu), W_b) + mu * conv(1, W_b) + bias (zero padding): the eval-mode
        float path up to float rounding (method.md section 2), in x's dtype. The weights are restored and
        packed on every call (no cache that could go stale); deploy.freeze packs them once."""
        packed = ops.pack_conv_weight(ops.restore_weight(weight4d.detach())[0])
        mu, sigma = (t.float().reshape(1) for t in self.running_stats())
        bias = None if self.bias is None else self.bias.float()
        out = ops.binary_conv2d_packed(x4d, packed, stride, padding, dilation, x_shift=mu, out_scale=sigma,
                                       out_bias=bias, ones_scale=mu)
        return out.to(x4d.dtype)


class ERBinaryConv2d(torch.nn.Conv2d, _Restoration):
    """nn.Conv2d with ER-BNN restoration of weights and input (1W1A), a drop-in for nn.Conv2d.

    Forward: conv2d(sigma * sign(xhat) + mu, sign(What)) where What = (W - mean_o) / alpha_o per output
    channel and xhat = (x - mu) / sigma with the batch statistics (training) or their running means over
    the last `stat_buffer` training steps (eval; (0, 1) before any step). Backward: tanh surrogates of
    adaptive width (ApproxSign) and gradients through all statistics (method.md sections 1-3).

    Args: nn.Conv2d's, positionally too. groups must be 1 and padding_mode "zeros" (other values raise
    ValueError, also when set after construction). bias defaults to False because a BatchNorm follows
    every binary conv in BNNs (a bias before it is redundant). Keyword-only: q_buffer (the q ring, 100
    in the paper), stat_buffer (the statistics ring, 1000), and the route settings xnor_train (a training
    step's forward conv on the popcount kernel, default True), nhwc_train (None: the measured rule, or
    True / False), fused_train (the step as one autograd node, default True) and lean_train (the step keeps
    packed signs instead of the restored y and w_b for its backward: a float conv's memory, a slower
    backward; default False): see nn.routing.

    Same `weight` Parameter and state_dict keys as nn.Conv2d, plus the buffers of weight_sign, act_sign,
    act_mean and act_sigma. Which kernel and layout a forward takes is decided by nn.routing.route(self, x):
    in eval mode under no_grad with the native backend the XNOR-popcount kernel (output in the input's
    dtype, equal to the float path up to rounding); in an eager float32 CPU training step the popcount
    forward conv too, with F.conv2d's backward.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, padding_mode="zeros", device=None, dtype=None, *, q_buffer=100, stat_buffer=1000,
                 xnor_train=True, nhwc_train=None, fused_train=True, lean_train=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._check_config()
        self._init_restoration(q_buffer, stat_buffer)
        # Route settings (nn.routing): plain attributes, not state
        self.xnor_train, self.nhwc_train, self.fused_train = xnor_train, nhwc_train, fused_train
        self.lean_train = lean_train

    def _check_config(self):
        check_binary_conv_config(self)

    def forward(self, x):
        self._check_config()
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input [N, {self.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        r = route(self, x)
        if r.kernel == XNOR_EVAL:
            return self._xnor_forward(x, self.stride, self.padding, self.dilation, self.weight)
        if r.kernel == ER_STEP:
            amp = torch.bfloat16 if r in AMP_STEPS else None
            return EF.ERConv2dStep.apply(x.float() if amp else x, self.weight, self.bias, self._weight_state(),
                                         self._act_state(), (self.stride, self.padding, self.dilation),
                                         r.layout == NHWC, lean_train(self), amp)
        measure = self._measuring(x)
        w_b = self.restored_weight(measure)
        y, mu, sigma = self._restore_input(x, measure)
        return EF.restored_conv2d(y, w_b, mu, sigma, self.bias, self.stride, self.padding, self.dilation,
                                  xnor=r.kernel == RESTORED_POPCOUNT)


class ERBinaryLinear(torch.nn.Linear, _Restoration):
    """nn.Linear with ER-BNN restoration of weights and input (1W1A); see ERBinaryConv2d. Keyword-only:
    q_buffer, stat_buffer."""

    def __init__(self, in_features, out_features, bias=False, device=None, dtype=None, *, q_buffer=100,
                 stat_buffer=1000):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_restoration(q_buffer, stat_buffer)

    def forward(self, x):
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects input [N, ..., {self.in_features}], "
                             f"got {tuple(x.shape)}")
        if route(self, x).kernel == XNOR_EVAL:
            out = self._xnor_forward(x.reshape(-1, self.in_features, 1, 1), (1, 1), (0, 0), (1, 1),
                                     self.weight[:, :, None, None])
            return out.reshape(*x.shape[:-1], self.out_features)
        measure = self._measuring(x)
        w_b = self.restored_weight(measure)
        return F.linear(self.restored_input(x, measure), w_b, self.bias)


def routes(model: torch.nn.Module, x: torch.Tensor, train: bool = True):
    """[(name, nn.routing.Route)] of every ER layer of `model` for one forward of x: a training step (train
    mode, grad enabled) or eval inference under no_grad. Runs a deep copy: the model's state is unchanged."""
    probe = copy.deepcopy(model).train(train)
    found, hooks = [], []
    for name, m in probe.named_modules():
        if isinstance(m, (ERBinaryConv2d, ERBinaryLinear)):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: found.append((name, route(mod, args[0])))))
    try:
        with torch.set_grad_enabled(train):
            probe(x)
    finally:
        for h in hooks:
            h.remove()
    return found
