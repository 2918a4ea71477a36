"""Constants and small helpers shared by the production code and the reference (no kernels, no dispatch).

The reference twins (erbnn_ext.reference) are the ground truth; the package calls them through the
dispatch point (erbnn_ext.ops.resolve), and only the overhead benchmark (which times them) and the tests
import them directly. What both sides need lives here.
"""
import torch

EPS = 1e-12  # floor of alpha / sigma / per-sample RMS (method.md section 1); csrc/common/macros.h kEps
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def acc_dtype(dtype):
    """Accumulation / statistics dtype for an input dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_width(b, like, copy=True):
    """The surrogate width b (float or tensor) as a detached 0-dim tensor of like's accumulation dtype.
    A tensor is copied unless copy=False: a caller may update its buffer before the backward runs."""
    if isinstance(b, torch.Tensor):
        return b.detach().to(dtype=acc_dtype(like.dtype), device=like.device, copy=copy).reshape(())
    return torch.tensor(float(b), dtype=acc_dtype(like.dtype), device=like.device)


def sign(x):
    """+1 for x >= 0 (also -0.0), -1 otherwise; same dtype as x."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def pair(v, name="argument"):
    """An int or a pair of ints as a 2-tuple (conv stride / padding / dilation)."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def word_bits(device) -> int:
    """Bits per packed sign word of the kernels on `device`: 64 on the CPU, 32 on CUDA (csrc: the CPU
    kernels' uint64_t words, the CUDA kernels' 32-bit __popc / b1 MMA words)."""
    return 64 if torch.device(device).type == "cpu" else 32


def word_dtype(device) -> torch.dtype:
    """The tensor dtype of those words: int64 on the CPU, int32 on CUDA."""
    return torch.int64 if word_bits(device) == 64 else torch.int32


def dtype_bits(dtype: torch.dtype) -> int:
    """Bits per word of a packed tensor of `dtype` (int64: 64, int32: 32)."""
    return 64 if dtype == torch.int64 else 32


def ring_push(values, count, v):
    """values[count % len] = v; count += 1 (in place on the tensors' device: no host sync)."""
    slot = torch.remainder(count, values.numel()).reshape(1)
    values.index_copy_(0, slot, v.detach().reshape(1).to(values.dtype))
    count.add_(1)


def ring_mean(values, count):
    """Mean of the filled entries of a ring whose unfilled slots hold 0: sum / min(count, len), 0 when
    empty (a genuine 0.0 entry is kept, unlike "average the non-zero entries")."""
    return values.sum() / count.clamp(1, values.numel()).to(values.dtype)
