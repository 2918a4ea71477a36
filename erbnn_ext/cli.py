"""The `erbnn` command (also `python -m erbnn_ext`): info, bench, train, eval."""
import argparse
import json
import sys


def _cmd_info(args):
    import erbnn_ext
    info = erbnn_ext.backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="erbnn", description="ER-BNN binary neural network toolkit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("info", help="show the compiled backends and the CPU path in use")
    sp.add_argument("--json", action="store_true", help="print JSON")
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
