"""End to end inference: deploy.freeze(model) vs the same network with float32 convs, and the eval-mode
ER-BNN model (XNOR path) beside them, at one batch size, side by side in one process.

    python -m erbnn_ext.benchmarks.frozen [--model resnet18_1w1a] [--batch 16] [--threads N]
"""
import argparse
import copy

import torch

from erbnn_ext import deploy, models, nn as enn
from erbnn_ext.benchmarks.timing import measure

MODELS = ("resnet18_1w1a", "resnet20_1w1a", "vgg_small_1w1a")


def _calibrated(name, seed=0):
    """The model after two training-mode forwards (the layers record activation statistics), in eval."""
    torch.manual_seed(seed)
    model = getattr(models, name)()
    for _ in range(2):
        model(torch.randn(8, 3, 32, 32)).sum().backward()
    return model.eval()


def float_twin(model):
    """The same network with every ER layer replaced by the float layer it extends (same weights)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, (enn.ERBinaryConv2d, enn.ERBinaryLinear)):
            if isinstance(m, enn.ERBinaryConv2d):
                new = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                      m.dilation, bias=m.bias is not None)
            else:
                new = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            new.load_state_dict({k: v for k, v in m.state_dict().items() if k in ("weight", "bias")})
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin.eval()


def run(name="resnet18_1w1a", batch=16, threads=None, min_run_time=0.5):
    model = _calibrated(name)
    cases = {"frozen (XNOR, BN folded)": deploy.freeze(model), "eval-mode ER model (XNOR)": model,
             "float32 network": float_twin(model)}
    x = torch.randn(batch, 3, 32, 32)
    out = {}
    for label, net in cases.items():
        def fn(net=net):
            with torch.no_grad():
                net(x)
        out[label] = measure(fn, min_run_time=min_run_time, threads=threads)["time_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18_1w1a", choices=MODELS)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    args = ap.parse_args(argv)
    res = run(args.model, args.batch, args.threads, args.min_run_time)
    base = res["float32 network"]
    print(f"{args.model}, batch {args.batch}, {args.threads or torch.get_num_threads()} threads: ms per forward")
    for label, t in res.items():
        print(f"  {label:<28}{t * 1e3:>9.2f} ms   {base / t:5.2f}x vs float32")


if __name__ == "__main__":
    main()
