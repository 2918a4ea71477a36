"""Does the training activation op's sampled band hold its quantile on REAL activations? (CPU)

The op's q comes from a band bracketed by a sample (band_select.h); when the band misses, it falls back to
the radix select and costs more than the radix select alone. Random test tensors cannot show a sample that
follows the data's layout (it once did: every run sat on the image borders of 32x32 maps), so this trains
resnet20_1w1a for a few SGD steps on the embedded digits, records the input of every ER layer over the last
steps, and times the op on each recorded tensor with the band (default) and with the radix select forced
(ERBNN_TRAIN_BAND_SELECT_MIN above the size). A ratio band / radix above 1 is a miss.

    python -m erbnn_ext.benchmarks.band_hits [--batch 16] [--p 0.8] [--steps 30] [--record 5]
"""
import argparse
import collections
import os

import torch

from .. import models as zoo, nn as enn
from ..data import load_digits, to_float
from .timing import header

_ENV = "ERBNN_TRAIN_BAND_SELECT_MIN"


def record_inputs(batch: int, p: float, steps: int, record: int, seed: int = 0):
    """The inputs of every ER layer of resnet20_1w1a during the last `record` of `steps` SGD steps."""
    torch.manual_seed(seed)
    train, _ = load_digits()
    model = zoo.MODELS["resnet20_1w1a"]().train()
    enn.set_percentile(model, p)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
             for m in model.modules() if isinstance(m, enn.ERBinaryConv2d)]
    g = torch.Generator().manual_seed(seed)
    try:
        for step in range(steps):
            idx = torch.randint(0, len(train.labels), (batch,), generator=g)
            x = to_float(train.images[idx], train.mean, train.std)
            loss = torch.nn.functional.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step < steps - record:
                seen.clear()
    finally:
        for h in hooks:
            h.remove()
    return seen


def train_op(x: torch.Tensor, p: float):
    f64 = dict(dtype=torch.float64)
    p_t, width = torch.tensor(p, **f64), torch.ones((), **f64)
    q_values, mean_values, sigma_values = torch.zeros(100, **f64), torch.zeros(1000, **f64), torch.zeros(1000, **f64)
    counts = [torch.zeros((), dtype=torch.int64) for _ in range(3)]
    return lambda: torch.ops.erbnn.restore_activation_train(x, p_t, q_values, counts[0], width, mean_values,
                                                            counts[1], sigma_values, counts[2], 0.1)


def band_over_radix(x: torch.Tensor, p: float, number: int = 20) -> float:
    from torch.utils import benchmark
    f = train_op(x, p)
    saved = os.environ.pop(_ENV, None)
    try:
        band = benchmark.Timer("f()", globals={"f": f}).timeit(number).median
        os.environ[_ENV] = str(1 << 62)
        radix = benchmark.Timer("f()", globals={"f": f}).timeit(number).median
    finally:
        os.environ.pop(_ENV, None)
        if saved is not None:
            os.environ[_ENV] = saved
    return band / radix


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--p", type=float, default=0.8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--record", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header(f"Activation quantile band on real activations: resnet20_1w1a on digits, batch {args.batch}, "
                 f"p {args.p}, the last {args.record} of {args.steps} SGD steps"))
    by_size = collections.defaultdict(list)
    for x in record_inputs(args.batch, args.p, args.steps, args.record):
        by_size[x.numel()].append(band_over_radix(x, args.p))
    print(f"{'values':>9}  {'calls':>5}  {'band/radix min':>14}  {'median':>6}  {'max':>5}  misses (ratio > 1)")
    for n, r in sorted(by_size.items()):
        r.sort()
        print(f"{n:>9}  {len(r):>5}  {r[0]:>14.2f}  {r[len(r) // 2]:>6.2f}  {r[-1]:>5.2f}  {sum(v > 1.0 for v in r)}")


if __name__ == "__main__":
    main()
