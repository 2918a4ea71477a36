"""ER-BNN modules (api.md): ApproxSign, ERBinaryConv2d, ERBinaryLinear, RPReLU, set_percentile,
PercentileSchedule, set_epoch, binarize_; baseline binarizers for ablations in nn.ablations."""
from .approx_sign import ApproxSign
from .convert import binarize_, load_weights
from .layers import ERBinaryConv2d, ERBinaryLinear, routes
from .ring import RingMean
from .rprelu import RPReLU
from .routing import Route, route, train_route
from .schedule import PercentileSchedule, set_epoch, set_percentile
from . import ablations  # noqa: E402  (imports layers)

__all__ = ["ApproxSign", "ERBinaryConv2d", "ERBinaryLinear", "RPReLU", "RingMean", "set_percentile",
           "PercentileSchedule", "set_epoch", "binarize_", "load_weights", "ablations", "Route", "route", "routes",
           "train_route"]
