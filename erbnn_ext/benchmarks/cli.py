"""`erbnn bench`: restoration overhead (ER-BNN vs IR-Net and ReCU), binary conv vs F.conv2d, and the training
step of ER layers and models vs their float twins, on the binary layer shapes of the paper's models; tables to
stdout, bench.json and bench.png to --out."""
import argparse
import json
import os
import sys

from .shapes import MODELS, parse_models as _models

DEFAULT_MODELS = ("resnet18", "resnet20")
DEFAULT_BATCH = 16   # activations of 16 images per layer: big enough that per-element work dominates
QUICK_BATCH = 2      # --quick without --batch (tests)
QUICK_REPEAT = 2


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _sections(text):
    from .run import SECTIONS
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(bad) or repr(text)}; choose from {', '.join(SECTIONS)}")
    return names


def add_bench_parser(sub):
    """Register the `bench` subcommand on an argparse subparsers object."""
    sp = sub.add_parser(
        "bench", help="time restoration (ER-BNN vs IR-Net/ReCU), binary conv vs F.conv2d, training steps vs float",
        description=__doc__)
    sp.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    sp.add_argument("--models", type=_models, default=list(DEFAULT_MODELS),
                    help=f"comma-separated, from {','.join(MODELS)} (default {','.join(DEFAULT_MODELS)})")
    sp.add_argument("--batch", type=_positive_int, default=None,
                    help=f"images per activation tensor (default {DEFAULT_BATCH}; {QUICK_BATCH} with --quick)")
    sp.add_argument("--repeat", type=_positive_int, default=None,
                    help="time each case with exactly N calls (Timer.timeit) instead of adaptive blocks")
    sp.add_argument("--min-time", type=_positive_float, default=0.2,
                    help="seconds per case for adaptive timing (Timer.blocked_autorange; default 0.2)")
    sp.add_argument("--threads", type=_positive_int, default=None,
                    help="torch CPU threads (default: torch's; 1 for the train_step section)")
    sp.add_argument("--sections", type=_sections, default=["overhead", "conv", "train_step"],
                    help="which parts, comma-separated (default overhead,conv,train_step)")
    sp.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall (default) or thread: CPU time of the calling thread, immune to other processes "
                         "on a busy machine (needs --threads 1)")
    sp.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_REPEAT} calls per case, batch {QUICK_BATCH} unless --batch; the "
                         f"results are marked as smoke results, not measurements")
    sp.add_argument("--json", action="store_true", help="print the JSON result to stdout (tables to stderr)")
    sp.add_argument("--out", default="erbnn_out", help="folder for bench.json and bench.png (default ./erbnn_out)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_bench)
    return sp


def _fail(msg, code=2):
    print(f"erbnn bench: error: {msg}", file=sys.stderr)
    return code


def cmd_bench(args):
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        return _fail(f"--device cuda: {why} (torch.cuda.is_available() is False); use --device cpu")
    try:  # fail before minutes of measuring, not after
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        return _fail(f"--out {args.out!r}: cannot create the output folder: {e}")
    if not os.access(args.out, os.W_OK):
        return _fail(f"--out {args.out!r}: the output folder is not writable")
    if args.clock == "thread" and args.threads != 1:
        return _fail("--clock thread measures one thread: pass --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (QUICK_BATCH if args.quick else DEFAULT_BATCH)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else None)

    from .report import render_text, write_outputs
    from .run import run_bench

    result = run_bench(args.models, batch=batch, device=args.device, sections=args.sections, repeat=repeat,
                       min_run_time=args.min_time, progress=not args.no_progress, threads=args.threads,
                       quick=args.quick, clock=args.clock)
    try:
        paths = write_outputs(result, args.out)
    except OSError as e:
        return _fail(f"--out {args.out!r}: cannot write the results: {e}", code=1)
    text = render_text(result) + f"\nWrote {paths[0]} and {paths[1]}\n"
    if args.json:
        sys.stderr.write(text)
        print(json.dumps(result, indent=1))
    else:
        sys.stdout.write(text)
    return 0
