"""NCHW <-> NHWC moves of an ER layer's training step (functional.ERConv2dStep).

oneDNN runs a conv's backward on channels_last tensors without reordering them; given NCHW tensors it
reorders the upstream gradient and the input in, and the input's gradient back out through ATen's strided
copy, which on small channel counts runs far below copy bandwidth. The ER step therefore holds its restored y as
NHWC rows [N, H*W, C] (a channels_last view for the conv): restore_activation_train_nhwc writes them from
NCHW x, _restore_activation_backward_nhwc reads the conv's channels_last grad_y in that order, and only
the upstream gradient crosses layouts, by ops.batch_transpose at copy bandwidth. A channels_last x needs
no move at all: its rows are a view, restored as they are.
"""
import torch

from . import ops

CL = torch.channels_last


def is_nhwc(t: torch.Tensor) -> bool:
    """t is 4-D channels_last memory that is not also plain contiguous (C == 1 or H == W == 1)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> its NHWC rows [N, H*W, C], contiguous: a view of channels_last memory, else one
    transpose."""
    n, c, h, w = t.shape
    if t.is_contiguous(memory_format=CL):
        return t.permute(0, 2, 3, 1).reshape(n, h * w, c)
    return ops.batch_transpose(t.reshape(n, c, h * w))


def as_nchw(r: torch.Tensor, shape) -> torch.Tensor:
    """NHWC rows [N, H*W, C] as the [N, C, H, W] tensor of `shape` in channels_last memory (a view)."""
    n, c, h, w = shape
    return r.view(n, h, w, c).permute(0, 3, 1, 2)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """t.contiguous(memory_format=torch.channels_last), by one ops.batch_transpose when t is not already."""
    return t if t.is_contiguous(memory_format=CL) else as_nchw(rows(t), t.shape)


def sign_bytes(bits: torch.Tensor, c: int) -> torch.Tensor:
    """Packed signs [N, P, ceil(c / 64)] (int64 words, bit j = channel j, little-endian) as uint8 bytes
    [N, P, B], B >= ceil(c / 8): the low 1, 2 or 4 bytes of the one word for c <= 32 (a cast, which keeps
    the low bits: 1/32 of a float32 tensor's bytes also where c fills a fraction of a word; a strided copy
    of the bytes costs 7x more), else the words' bytes (a view). The lean ER step keeps these for its
    backward, which ops.unpack_restored turns back into y or w_b."""
    if c <= 32 and bits.shape[-1] == 1:
        bits = bits.to(torch.int8 if c <= 8 else torch.int16 if c <= 16 else torch.int32)
    return bits.contiguous().view(torch.uint8)
