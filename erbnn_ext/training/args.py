"""`erbnn train` / `erbnn eval` arguments: their checks, defaults, and the recipe a run resolves to."""
import argparse
import math

from .. import _backend
from .. import models
from ..data import is_imagefolder
from ..models import METHODS, MODELS
from .errors import UsageError
from .recipe import default_weight_decay

# The CIFAR-10 recipe (method.md section 5). warmup None: scaled to the run, the paper's 17 of 1000 epochs
# (scaled_warmup), so that a short run leaves its warm-up.
DEFAULTS = {"model": "resnet20_1w1a", "method": "erbnn", "epochs": 1000, "batch_size": 256, "lr": 0.1,
            "momentum": 0.9, "weight_decay": None, "warmup": None, "seed": 0, "data": None, "p0": 0.8,
            "p1": 0.0, "limit_train": None}
RECIPE_KEYS = tuple(DEFAULTS)  # these define the run: taken from the checkpoint on --resume
PAPER_WARMUP, PAPER_EPOCHS = 17, 1000
# where --data is an ImageNet-style folder (train/ and val/): the ImageNet recipe (docs/imagenet.md)
IMAGENET_DEFAULTS = {"model": "resnet18_1w1a_imagenet", "epochs": 120, "warmup": 0}
# without --data, the embedded digits (1437 training images): a run of a few minutes on 2 cores that
# learns them (docs/training.md states its accuracy and time); smaller batches give a short run more steps.
DIGITS_DEFAULTS = {"epochs": 15, "batch_size": 64}
AMP = ("bf16", "fp16")


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s):
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def _unit_float(s):
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def model_name(name: str) -> str:
    """--model: a key of MODELS or its short form (erbnn_ext.models.model_name)."""
    try:
        return models.model_name(name)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(sorted(MODELS))} "
                                         f"or the short forms {', '.join(sorted(models.ALIASES))})") from None


def runtime_arguments(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--backend", choices=_backend.BACKENDS, default=None,
                   help="ER-BNN ops: native kernels or the pure-PyTorch reference (default: $ERBNN_BACKEND "
                        "or native)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per process")
    p.add_argument("--workers", type=_nonneg_int, default=0, help="data-loading worker processes")
    p.add_argument("--amp", choices=AMP, default=None,
                   help="mixed precision through torch.autocast: bf16 (CPU, CUDA) or fp16 (CUDA, grad scaler)")
    p.add_argument("--channels-last", action="store_true", help="model and batches in channels-last layout")


def train_arguments(p):
    p.add_argument("--model", type=model_name, default=None, metavar="MODEL",
                   help=f"{', '.join(sorted(MODELS))} or the short forms without _1w1a (default "
                        f"{DEFAULTS['model']}; {IMAGENET_DEFAULTS['model']} on an ImageNet folder)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="binarizer: erbnn (default) or the ablations clip, ede, irnet, recu")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"E (default {DEFAULTS['epochs']} on CIFAR-10, {IMAGENET_DEFAULTS['epochs']} on an ImageNet "
                        f"folder, {DIGITS_DEFAULTS['epochs']} on the embedded digits)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"global batch (default {DEFAULTS['batch_size']}; {DIGITS_DEFAULTS['batch_size']} on the "
                        f"embedded digits)")
    p.add_argument("--lr", type=_positive_float, default=None, help="base learning rate (default 0.1)")
    p.add_argument("--momentum", type=_nonneg_float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="default 1e-4 (2e-4 for resnet18_1w1a)")
    p.add_argument("--warmup", type=_nonneg_int, default=None,
                   help=f"linear warm-up epochs (default: {PAPER_WARMUP} per {PAPER_EPOCHS} epochs, at least 1: "
                        f"{PAPER_WARMUP} for the CIFAR-10 recipe; 0 on an ImageNet folder)")
    p.add_argument("--p0", type=_unit_float, default=None, help="ER-BNN percentile at epoch 0 (0.8)")
    p.add_argument("--p1", type=_unit_float, default=None, help="ER-BNN percentile at the end (0.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 cifar-10-batches-py folder (or its parent), or an ImageNet-style folder "
                        "with train/ and val/ class folders; default: the embedded scikit-learn digits")
    p.add_argument("--limit-train", type=_positive_int, default=None,
                   help="train on the first N images of the training split only (smoke runs)")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>_<method>_seed<seed>)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint file (or a folder holding checkpoint.pt)")
    p.add_argument("--stop-after", type=_positive_int, default=None, metavar="K",
                   help="stop once K epochs in total are done (the schedules still span --epochs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    runtime_arguments(p)


def eval_arguments(p):
    p.add_argument("checkpoint", help="checkpoint.pt written by `erbnn train`")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 folder or ImageNet-style folder (its val/) (default: the data the model trained on)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON")
    runtime_arguments(p)


def scaled_warmup(epochs: int) -> int:
    """The paper's warm-up (17 of 1000 epochs) scaled to a run of `epochs`: at least 1, 17 at 1000."""
    return max(1, round(PAPER_WARMUP * epochs / PAPER_EPOCHS))


def resolve_config(args, ckpt):
    """The run's recipe: the arguments given, else the checkpoint's (on --resume), else DEFAULTS."""
    cfg = {}
    data = getattr(args, "data", None) if ckpt is None else ckpt["args"].get("data")
    defaults = dict(DEFAULTS, **(DIGITS_DEFAULTS if data is None else
                                 IMAGENET_DEFAULTS if is_imagefolder(data) else {}))
    for k in RECIPE_KEYS:
        given = getattr(args, k, None)
        saved = ckpt["args"].get(k) if ckpt else None
        if ckpt is not None and given is not None and given != saved and k != "epochs":
            raise UsageError(f"--{k.replace('_', '-')} {given} differs from the checkpoint's {saved!r}; "
                             f"a resumed run keeps its recipe (only --epochs may change)")
        cfg[k] = given if given is not None else (saved if ckpt is not None else defaults[k])
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = default_weight_decay(cfg["model"])
    if cfg["warmup"] is None:
        cfg["warmup"] = scaled_warmup(cfg["epochs"])
    if cfg["p1"] > cfg["p0"]:
        raise UsageError(f"--p1 ({cfg['p1']}) must not exceed --p0 ({cfg['p0']})")
    return cfg
