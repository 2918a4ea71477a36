"""ER-BNN modules (api.md): ApproxSign, ERBinaryConv2d, ERBinaryLinear, RPReLU, set_percentile,
PercentileSchedule, binarize_."""
from .approx_sign import ApproxSign
from .convert import binarize_
from .layers import ERBinaryConv2d, ERBinaryLinear
from .ring import RingMean
from .rprelu import RPReLU
from .schedule import PercentileSchedule, set_percentile

__all__ = ["ApproxSign", "ERBinaryConv2d", "ERBinaryLinear", "RPReLU", "RingMean", "set_percentile",
           "PercentileSchedule", "binarize_"]
