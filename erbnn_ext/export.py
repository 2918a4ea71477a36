"""Deployment beyond Python eager mode: torch.export of a frozen ER-BNN model (docs/api.md, "Export").

    import erbnn_ext
    from erbnn_ext import export
    ep = export.export(model, torch.randn(2, 3, 224, 224))    # freezes a trained model first
    export.save(ep, "model.pt2")
    ep = export.load("model.pt2")                              # in another process: import erbnn_ext first
    logits = ep.module()(images)                               # any batch size

The exported program is a graph of ATen ops plus erbnn's own packed binary convolutions
(torch.ops.erbnn.binary_conv2d_packed, and binary_conv2d_bits where freeze chains layers through packed
signs; the packed weights are constants). Those custom ops are
registered when the compiled extension loads, so the process that loads and runs the program must
`import erbnn_ext` (with the same build's native extension) first; torch.export.load on its own reports
an unknown operator. Without the native extension the frozen model runs its pure-PyTorch reference and
the program holds ATen ops only.

ONNX: refused (export_onnx raises), see its docstring.
"""
import torch

from . import deploy
from .nn.layers import ERBinaryConv2d, ERBinaryLinear
from .nn.ablations import BINARY_CONVS

__all__ = ["export", "save", "load", "export_onnx", "custom_ops"]

_TRAINABLE_BINARY = tuple({ERBinaryConv2d, ERBinaryLinear, *BINARY_CONVS.values()})


def _frozen(model):
    """deploy.freeze(model) for a model with ER-BNN layers; a model with none (already frozen, or plain)
    as it is, in eval mode. Ablation layers (IR-Net, ReCU...) have no frozen form: refused."""
    er = [n for n, m in model.named_modules() if isinstance(m, (ERBinaryConv2d, ERBinaryLinear))]
    other = [n for n, m in model.named_modules()
             if isinstance(m, _TRAINABLE_BINARY) and not isinstance(m, (ERBinaryConv2d, ERBinaryLinear))]
    if other:
        raise ValueError(f"export: layers {other[:3]} are ablation binary layers with no frozen (packed) form; "
                         f"only ER-BNN models (method='erbnn') export")
    if er:
        return deploy.freeze(model)
    return deploy.materialize(model.eval())  # a loaded frozen model: its generated forwards, before tracing


def export(model: torch.nn.Module, example_input: torch.Tensor, dynamic_batch: bool = True,
           strict: bool = False) -> torch.export.ExportedProgram:
    """torch.export.export of the frozen `model` (deploy.freeze is applied when it still has ER-BNN
    layers; a frozen model is taken as it is). example_input: one batch of the input; with
    dynamic_batch the program accepts any batch size >= 1 (the other dimensions are fixed to the
    example's). The returned ExportedProgram runs with .module()(x)."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"export: example_input must be a tensor, got {type(example_input).__name__}")
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(f"export: example_input needs a batch dimension, got shape {tuple(example_input.shape)}")
    frozen = _frozen(model)
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim.DYNAMIC},)
    with torch.no_grad():
        return torch.export.export(frozen, (example_input,), dynamic_shapes=dynamic_shapes, strict=strict)


def save(program: torch.export.ExportedProgram, path) -> None:
    """torch.export.save (a .pt2 archive: graph, constants, packed weights)."""
    torch.export.save(program, path)


def load(path) -> torch.export.ExportedProgram:
    """torch.export.load, after erbnn_ext (and so its custom ops) is imported: this module's import did it."""
    return torch.export.load(path)


def custom_ops(program: torch.export.ExportedProgram) -> list:
    """The erbnn custom operators the program calls (what a runtime needs besides ATen), sorted."""
    ops = set()
    for node in program.graph.nodes:
        if node.op == "call_function" and str(getattr(node.target, "namespace", "")) == "erbnn":
            ops.add(str(node.target))
    return sorted(ops)


def export_onnx(model, example_input, path=None, **kwargs):
    """Refused: raises NotImplementedError with the reason and the alternatives.

    A frozen model's binary layers are erbnn's packed XNOR-popcount convolution, which has no ONNX
    operator; exporting it as a custom-domain op would give a file no ONNX runtime can execute without
    a kernel written for that runtime, and this package ships none (nor depends on onnx / onnxscript).
    Use export() (torch.export) to leave Python eager mode, or torch.onnx.export the *unfrozen* eval
    model's float graph yourself if a runtime without erbnn kernels must run it (sign + float conv).
    """
    try:
        import onnx  # noqa: F401
        have = "onnx is installed, but "
    except ImportError:
        have = "onnx is not installed, and "
    raise NotImplementedError(
        "erbnn_ext.export.export_onnx: ONNX export of a frozen ER-BNN model is not supported: " + have +
        "the packed binary convolution (torch.ops.erbnn.binary_conv2d_packed) has no ONNX operator and this "
        "package ships no ONNX-runtime kernel for a custom-domain op. Use erbnn_ext.export.export(model, x) "
        "(torch.export; the loading process must import erbnn_ext) instead.")
