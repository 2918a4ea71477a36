"""erbnn_ext.summary(model): a per-layer account of a binary network (what larq.models.summary gives Keras
users): which layers are binary, their parameters, multiply-accumulates and memory.

Conventions (docs/api.md):
- A layer is *binary* when it is an ER-BNN layer (ERBinaryConv2d / ERBinaryLinear) or one of the ablation
  convs (erbnn_ext.nn.ablations): its weight is binary (1 bit once packed); its bias, if any, is float.
  Every other parameter is float.
- Parameters are nn.Parameters; buffers (BatchNorm running statistics, the ER statistics rings) are not
  counted, as in a parameter count.
- MACs are counted for convolutions and linear layers only (one image: batch 1), the usual convention;
  BatchNorm, RPReLU and pooling are left out. A binary layer's MACs are binary (XNOR-popcount) MACs.
- Memory: float32 = 4 bytes per parameter; packed = 1 bit per binary weight + 4 bytes per float parameter.
- ops = float MACs + binary MACs / 64 (Bi-Real Net's and ReActNet's count of a binary net's operations).
The output shapes come from forward hooks on a meta-device copy of the model (no compute, no memory);
binary layers run a plain conv / linear there, since their restoration needs real values.
"""
import copy
import functools
from dataclasses import asdict, dataclass, field

import torch

from .nn.ablations import BINARY_CONVS
from .nn.layers import ERBinaryConv2d, ERBinaryLinear

__all__ = ["summary", "ModelSummary", "LayerRow", "BINARY_LAYERS"]

BINARY_LAYERS = tuple({ERBinaryConv2d, ERBinaryLinear, *BINARY_CONVS.values()})
_COUNTED = (torch.nn.Conv2d, torch.nn.Linear)


@dataclass
class LayerRow:
    name: str
    type: str
    kind: str                 # "binary" or "float"
    output_shape: tuple       # one image's output (no batch dimension); () if the layer did not run
    binary_params: int
    float_params: int
    binary_macs: int
    float_macs: int

    @property
    def params(self) -> int:
        return self.binary_params + self.float_params

    @property
    def memory_float32(self) -> int:
        """Bytes with every parameter in float32."""
        return 4 * self.params

    @property
    def memory_packed(self) -> float:
        """Bytes with binary weights packed 1 bit each (float parameters stay float32)."""
        return self.binary_params / 8 + 4 * self.float_params


@dataclass
class ModelSummary:
    model: str
    input_size: tuple
    rows: list = field(default_factory=list)

    def _sum(self, attr):
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def totals(self) -> dict:
        t = {k: self._sum(k) for k in ("binary_params", "float_params", "params", "binary_macs", "float_macs",
                                        "memory_float32", "memory_packed")}
        t["macs"] = t["binary_macs"] + t["float_macs"]
        t["ops"] = t["float_macs"] + t["binary_macs"] / 64
        t["compression"] = t["memory_float32"] / t["memory_packed"] if t["memory_packed"] else 1.0
        t["binary_param_share"] = t["binary_params"] / t["params"] if t["params"] else 0.0
        t["binary_mac_share"] = t["binary_macs"] / t["macs"] if t["macs"] else 0.0
        return t

    def to_dict(self) -> dict:
        rows = [dict(asdict(r), output_shape=list(r.output_shape), memory_float32=r.memory_float32,
                     memory_packed=r.memory_packed) for r in self.rows]
        return {"model": self.model, "input_size": list(self.input_size), "layers": rows, "totals": self.totals}

    def table(self) -> str:
        head = ("layer", "type", "kind", "output", "binary params", "float params", "binary MACs", "float MACs",
                "fp32 mem", "packed mem")
        lines = [(r.name, r.type, r.kind, "x".join(map(str, r.output_shape)) or "-", f"{r.binary_params:,}",
                  f"{r.float_params:,}", f"{r.binary_macs:,}", f"{r.float_macs:,}", _bytes(r.memory_float32),
                  _bytes(r.memory_packed)) for r in self.rows]
        t = self.totals
        total = ("total", "", "", "", f"{t['binary_params']:,}", f"{t['float_params']:,}", f"{t['binary_macs']:,}",
                 f"{t['float_macs']:,}", _bytes(t["memory_float32"]), _bytes(t["memory_packed"]))
        widths = [max(len(str(x[i])) for x in [head, total] + lines) for i in range(len(head))]

        def fmt(cells):
            return "  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(fmt(head))
        out = [f"{self.model}  (input {'x'.join(map(str, self.input_size))}, MACs per image)", rule, fmt(head), rule]
        out += [fmt(x) for x in lines] + [rule, fmt(total), rule]
        out += [f"parameters: {t['params']:,} ({t['binary_params']:,} binary = {100 * t['binary_param_share']:.1f}%,"
                f" {t['float_params']:,} float)",
                f"MACs: {t['macs']:,} ({t['binary_macs']:,} binary = {100 * t['binary_mac_share']:.1f}% of the compute,"
                f" {t['float_macs']:,} float); ops (float + binary/64): {t['ops']:,.0f}",
                f"memory: {_bytes(t['memory_float32'])} float32 -> {_bytes(t['memory_packed'])} packed"
                f" (compression {t['compression']:.2f}x)"]
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _bytes(n) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g} B"


def _param_split(module, binary: bool, whole: bool):
    """(binary, float) parameter counts of `module` (with everything below it when whole)."""
    total = sum(p.numel() for p in module.parameters(recurse=whole))
    b = module.weight.numel() if binary else 0
    return b, total - b


def _macs(module, out: torch.Tensor) -> int:
    """MACs of one image through a conv or linear layer whose output (batch first) is `out`."""
    per_image = out.numel() // max(out.shape[0], 1)
    if isinstance(module, torch.nn.Conv2d):
        k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]  # Cin/groups * kh * kw
        return per_image * k
    if isinstance(module, torch.nn.Linear):
        return per_image * module.in_features
    return 0


def _units(model):
    """(name, module, binary, whole) rows: every binary layer, and every other module that owns parameters
    or is a conv / linear. whole: the row holds no conv / linear / binary layer below it (e.g. RPReLU and
    its PReLU), so it counts the parameters below it and they are not listed again; otherwise it counts
    its own parameters only. Each parameter is counted once."""
    swallowed = []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in swallowed):
            continue
        binary = isinstance(m, BINARY_LAYERS)
        if binary or list(m.parameters(recurse=False)) or isinstance(m, _COUNTED):
            whole = binary or not any(isinstance(c, _COUNTED + BINARY_LAYERS) for c in m.modules() if c is not m)
            if whole:
                swallowed.append(name)
            yield name, m, binary, whole


def _shape_pass(model, input_size, units):
    """{name: output tensor (meta)} from one batch-1 forward of a meta copy of the model."""
    meta = copy.deepcopy(model).to("meta").eval()
    outputs, hooks = {}, []
    for name, _, binary, _ in units:
        m = meta.get_submodule(name)
        if binary:  # restoration needs real values; the output shape is the plain layer's
            base = torch.nn.Conv2d if isinstance(m, torch.nn.Conv2d) else torch.nn.Linear
            m.forward = functools.partial(base.forward, m)
        hooks.append(m.register_forward_hook(functools.partial(_record, outputs, name)))
    try:
        with torch.no_grad():
            meta(torch.zeros((1,) + tuple(input_size), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _record(outputs, name, module, args, out):
    if isinstance(out, torch.Tensor):
        outputs[name] = out


def summary(model: torch.nn.Module, input_size=None) -> ModelSummary:
    """Per-layer kind (binary / float), parameters, MACs (binary and float, per image) and memory (float32
    and packed) of `model`, with totals: the compression ratio and the binary share of the compute.

    input_size: (C, H, W) of one image; None uses the model's own (3x32x32 for the CIFAR models,
    3x224x224 for the ImageNet ResNet-18; other models need it given). print() the result for a table;
    .rows, .totals and .to_dict() hold the numbers."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"summary: model must be a torch.nn.Module, got {type(model).__name__}")
    if input_size is None:
        input_size = _default_input_size(model)
    input_size = tuple(int(s) for s in input_size)
    if not input_size or any(s < 1 for s in input_size):
        raise ValueError(f"summary: input_size must be positive sizes of one image, e.g. (3, 224, 224); "
                         f"got {input_size}")
    units = list(_units(model))
    try:
        outputs = _shape_pass(model, input_size, units)
    except Exception as exc:
        raise RuntimeError(f"summary: the forward of {type(model).__name__} on a meta-device input of size "
                           f"{input_size} failed ({type(exc).__name__}: {exc}); check input_size") from exc
    s = ModelSummary(type(model).__name__, input_size)
    for name, m, binary, whole in units:
        out = outputs.get(name)
        bp, fp = _param_split(m, binary, whole)
        macs = _macs(m, out) if out is not None else 0
        s.rows.append(LayerRow(name or "(model)", type(m).__name__, "binary" if binary else "float",
                               tuple(out.shape[1:]) if out is not None else (), bp, fp,
                               macs if binary else 0, 0 if binary else macs))
    return s


def _default_input_size(model):
    from . import models as M
    classes = {M.ResNet20: "resnet20_1w1a", M.ResNet18: "resnet18_1w1a", M.VGGSmall: "vgg_small_1w1a",
               M.ResNet18ImageNet: "resnet18_1w1a_imagenet"}
    for cls, name in classes.items():
        if isinstance(model, cls):
            return M.INPUT_SIZES[name]
    raise ValueError(f"summary: give input_size=(C, H, W) for {type(model).__name__} (defaults are known only "
                     f"for the package's models {sorted(M.MODELS)})")
