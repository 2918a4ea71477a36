"""Modules whose floating-point buffers stay float64 under Module.to(dtype) / .half() / .bfloat16().

The ER layers' state (p, the width b, the q and statistics rings) is float64 by definition (method.md
section 3; the fused training ops require it): casting a whole model to bfloat16 must move these
buffers with it to the new device but keep their dtype and bits, as it would otherwise round p = 0.8 to
0.80078 and make the next training step refuse the rings.
"""
import torch


class Float64State(torch.nn.Module):
    def _apply(self, fn, recurse=True):
        def keep_dtype(t):
            out = fn(t)
            if t.is_floating_point() and out.dtype != t.dtype:
                return t.to(out.device)
            return out
        return super()._apply(keep_dtype, recurse)
