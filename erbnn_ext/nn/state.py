"""Modules whose floating-point buffers stay float64 under Module.to(dtype) / .half() / .bfloat16().

The ER layers' state (p, the width b, the q and statistics rings) is float64 by definition (method.md
section 3; the fused training ops require it): casting a whole model to bfloat16 must move these
buffers with it to the new device but keep their dtype and bits, as it would otherwise round p = 0.8 to
0.80078 and make the next training step refuse the rings.
"""
import torch


class Float64State(torch.nn.Module):
    """Its floating-point buffers keep their dtype (float64 for the ER state) through any Module._apply
    (.to, .half, .cuda, ...): a dtype change of fn is dropped, a device change kept."""

    def _apply(self, fn, recurse=True):
        def keep_dtype(t):
            if not t.is_floating_point():
                return fn(t)
            # fn applied to an empty tensor of t's kind tells where fn sends t, without moving t's data
            probe = fn(t.new_empty(0))
            if probe.device == t.device:
                return t
            if t.is_meta:  # Module.to_empty(): storage without data, in t's dtype
                return torch.empty_like(t, device=probe.device)
            return t.to(probe.device)
        return super()._apply(keep_dtype, recurse)
