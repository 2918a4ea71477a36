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
    return 0


def _layer_routes(name, batch, train):
    """[{layer, kernel, layout, reason}] of every ER layer of model `name` (erbnn_ext.nn.routes)."""
    import torch

    from . import models as zoo
    from .nn import routes
    key = zoo.model_name(name)
    x = torch.randn(batch, *zoo.INPUT_SIZES[key])
    return [{"layer": layer, **r._asdict()} for layer, r in routes(zoo.MODELS[key](), x, train=train)]


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
