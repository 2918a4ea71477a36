"""The `erbnn` command (also `python -m erbnn_ext`): info, bench, train, eval."""
import argparse
import json
import sys


def _cmd_info(args):
    import erbnn_ext
    info = erbnn_ext.backend_info()
    if args.model:
        info["routes"] = _layer_routes(args.model, args.batch, train=not args.eval)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k != "routes":
            print(f"{k:<{width}}  {v}")
    if args.model:
        mode = "eval (no_grad)" if args.eval else "training step"
        print(f"\nRoute per ER layer of {args.model}, {mode}, batch {args.batch} (erbnn_ext.nn.routing):")
        w = max(len(r["layer"]) for r in info["routes"])
        for r in info["routes"]:
            print(f"  {r['layer']:<{w}}  {r['kernel']:<17} {r['layout']:<5} {r['reason']}")
        engines = [r for r in info["routes"] if r.get("engine")]
        if engines:
            print("\nCPU binary-conv engine per layer (auto: measured on the layer's first call in this process):")
            for r in engines:
                print(f"  {r['layer']:<{w}}  {r['engine']:<11} {r['engine_why']}")
    return 0


def _layer_routes(name, batch, train):
    """[{layer, kernel, layout, reason}] of every ER layer of model `name` (erbnn_ext.nn.routes), with
    {engine, engine_why} for the convs whose route runs the CPU popcount conv (the engine its shape got)."""
    import torch

    from . import models as zoo
    from .benchmarks.binary_conv import conv_engine_key, engine_of
    from .nn import ERBinaryConv2d, routes
    key = zoo.model_name(name)
    x = torch.randn(batch, *zoo.INPUT_SIZES[key])
    model = zoo.MODELS[key]()
    inputs = {}  # layer -> input shape; routes() runs a deep copy, which carries these hooks

    def record(name):
        def hook(mod, args):
            inputs.setdefault(name, tuple(args[0].shape))  # returns None: the input is left as it is
        return hook
    for n, m in model.named_modules():
        if isinstance(m, ERBinaryConv2d):
            m.register_forward_pre_hook(record(n))
    out = []
    for layer, r in routes(model, x, train=train):
        row = {"layer": layer, **r._asdict()}
        m = model.get_submodule(layer)
        if r.kernel != "float" and isinstance(m, ERBinaryConv2d) and layer in inputs:
            _, c, h, w = inputs[layer]
            row["engine"], row["engine_why"] = engine_of(conv_engine_key(
                c, h, w, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation))
        out.append(row)
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="erbnn", description="ER-BNN binary neural network toolkit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("info", help="show the compiled backends and the CPU path in use")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--model", help="also print the route (kernel, layout, why) of each ER layer of this model "
                                    "(resnet20, resnet18, vgg_small, resnet18_imagenet) for a training step")
    sp.add_argument("--eval", action="store_true", help="with --model: the routes of eval inference under no_grad")
    sp.add_argument("--batch", type=int, default=2, help="with --model: the input's batch size (default 2)")
    sp.set_defaults(func=_cmd_info)
    from .benchmarks.cli import add_bench_parser
    from .training import add_eval_parser, add_train_parser
    add_bench_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    from .summary_cli import add_parser as add_summary_parser; add_summary_parser(sub)  # noqa: E702
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
