"""`erbnn summary MODEL`: the per-layer table of erbnn_ext.summary for one of the package's models."""
import json


def _input_size(text):
    import argparse
    try:
        sizes = tuple(int(s) for s in text.lower().replace("x", ",").split(",") if s.strip())
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,224,224 or 3x224x224), got {text!r}")
    return sizes


def add_parser(sub):
    """Register the `summary` subcommand on an argparse subparsers object."""
    from .models import ALIASES, METHODS, MODELS
    p = sub.add_parser("summary", help="per-layer binary/float parameters, MACs and memory of a model",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL",
                   help=f"one of {', '.join(MODELS)} or a short form ({', '.join(ALIASES)})")
    p.add_argument("--input-size", type=_input_size, default=None, metavar="C,H,W",
                   help="one image's size (default: the model's, 3,32,32 or 3,224,224 for ImageNet)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the model's)")
    p.add_argument("--method", choices=METHODS, default="erbnn", help="binary layer kind (default erbnn)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summary)
    return p


def cmd_summary(args) -> int:
    import sys
    from .models import INPUT_SIZES, build_model, model_name
    from .summary import summary
    try:
        name = model_name(args.model)
        if args.num_classes is not None and args.num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {args.num_classes}")
        model = build_model(name, args.num_classes, args.method)
        s = summary(model, args.input_size or INPUT_SIZES[name])
    except (ValueError, RuntimeError) as e:
        print(f"erbnn summary: {e}", file=sys.stderr)
        return 2
    s.model = name
    print(json.dumps(s.to_dict(), indent=2) if args.json else s.table())
    return 0
