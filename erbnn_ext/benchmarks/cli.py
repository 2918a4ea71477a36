"""`erbnn bench`: restoration overhead (ER-BNN vs IR-Net and ReCU), binary conv vs F.conv2d, and the training
step of ER layers and models vs their float twins, on the binary layer shapes of the paper's models. Each
section's tables go to stdout when it ends; --out/bench.json is rewritten after every case (a killed or
interrupted run keeps what it measured, marked "complete": false) and bench.png drawn at the end."""
import argparse
import contextlib
import json
import os
import signal
import sys

from .. import _extras
from .shapes import MODELS, parse_models as _models

DEFAULT_MODELS = ("resnet18", "resnet20")
# Minutes per section for the default models at the defaults (batch 16, --min-time 0.2): a run on 2 cores
# (AMD Zen 5) shared with other jobs (load average 13), so upper bounds; --help prints them so that a user
# can pick --sections / --models. bench.json's section_time_s has a run's own.
SECTION_MINUTES = {"overhead": 8, "conv": 0.7, "train_step": 5.5}
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
                    help=f"comma-separated, from {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)}); "
                         "a section's time grows with the number of distinct layer shapes: "
                         + ", ".join(f"{m} {len(s)}" for m, s in MODELS.items())
                         + " (resnet18_imagenet's at 224x224, several times slower per shape)")
    sp.add_argument("--batch", type=_positive_int, default=None,
                    help=f"images per activation tensor (default {DEFAULT_BATCH}; {QUICK_BATCH} with --quick)")
    sp.add_argument("--repeat", type=_positive_int, default=None,
                    help="time each case with exactly N calls (Timer.timeit) instead of adaptive blocks")
    sp.add_argument("--min-time", type=_positive_float, default=0.2,
                    help="seconds per case for adaptive timing (Timer.blocked_autorange; default 0.2)")
    sp.add_argument("--threads", type=_positive_int, default=None,
                    help="torch CPU threads (default: torch's; 1 for the train_step section)")
    sp.add_argument("--sections", type=_sections, default=["overhead", "conv", "train_step"],
                    help="which parts, comma-separated (default all, in this order): "
                         + ", ".join(f"{s} (~{m:g} min)" for s, m in SECTION_MINUTES.items())
                         + "; minutes for the default models at the defaults on 2 busy cores (upper bounds)")
    sp.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall (default) or thread: CPU time of the calling thread, immune to other processes "
                         "on a busy machine (needs --threads 1)")
    sp.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_REPEAT} calls per case, batch {QUICK_BATCH} unless --batch; the "
                         f"results are marked as smoke results, not measurements")
    sp.add_argument("--json", action="store_true", help="print the JSON result to stdout (tables to stderr)")
    sp.add_argument("--out", default="erbnn_out", help="folder for bench.json and bench.png (default ./erbnn_out)")
    sp.add_argument("--no-progress", action="store_true",
                    help="no progress on stderr (a bar on a terminal, otherwise one line per case)")
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

    from . import report
    from .run import run_bench

    # Tables go to stdout as each section ends (to stderr with --json, whose document is stdout's only
    # content); bench.json is rewritten after every case, marked complete only at the end.
    text_out = sys.stderr if args.json else sys.stdout
    json_path = os.path.join(args.out, report.JSON_NAME)
    state = {"result": None}

    def on_update(result, finished):
        if state["result"] is None:
            text_out.write(report.head_text(result))
            if not report.can_plot():
                text_out.write(f"(bench.png is not drawn: matplotlib is not installed; "
                               f"{_extras.install_hint('matplotlib')})\n")
            text_out.flush()
        state["result"] = result
        try:
            report.write_json(result, json_path)
        except OSError as e:
            raise _OutputError(f"--out {args.out!r}: cannot write the results: {e}") from e
        if finished:
            text_out.write(report.section_text(result, finished))
            text_out.flush()

    def stopped(why):
        result = state["result"]
        if result is None:
            return
        result["complete"] = False
        result["stopped"] = why
        try:
            report.write_json(result, json_path)
        except OSError:
            return
        done = ", ".join(result["sections_done"]) or "none"
        print(f"erbnn bench: {why}; {json_path} keeps the {len(result['rows'])} cases measured (sections "
              f"finished: {done}), marked incomplete", file=sys.stderr)

    try:
        with _sigterm_as_interrupt():
            result = run_bench(args.models, batch=batch, device=args.device, sections=args.sections, repeat=repeat,
                               min_run_time=args.min_time, progress=not args.no_progress, threads=args.threads,
                               quick=args.quick, clock=args.clock, on_update=on_update)
    except KeyboardInterrupt as e:
        stopped("interrupted (SIGTERM)" if isinstance(e, _Terminated) else "interrupted (Ctrl-C)")
        return 143 if isinstance(e, _Terminated) else 130
    except _OutputError as e:
        return _fail(str(e), code=1)
    except BaseException as e:
        stopped(f"stopped by an error: {type(e).__name__}: {e}")
        raise
    try:
        paths = report.write_outputs(result, args.out)
    except OSError as e:
        return _fail(f"--out {args.out!r}: cannot write the results: {e}", code=1)
    text_out.write(report.tail_text(result) + f"\nWrote {' and '.join(paths)}\n")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


class _OutputError(Exception):
    """bench.json could not be written."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a CI timeout) handled as an interrupt, so that bench.json records why it stopped."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def handler(signum, frame):
        raise _Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
