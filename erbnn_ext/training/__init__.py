"""Training the 1W1A models: the CIFAR-10 recipe of method.md section 5.

SGD (lr 0.1, momentum 0.9, weight decay 1e-4; 2e-4 for ResNet-18), batch 256, cross-entropy; per
epoch e of E: lr factor (e + 1) / W for the W = 17 warm-up epochs, then 0.5 * (1 + cos(pi * (e - (W - 1))
/ (E - (W - 1)))); every binarizer schedule (p of ER-BNN, t of EDE, tau of ReCU) set once per epoch.

Outputs (rank 0 only) in --out: metrics.csv, metrics.json, curves.png, checkpoint.pt (every epoch; a
plain dict of state_dicts: model, optimizer, scheduler, epoch, RNG states, data-order state, args).
--resume continues bit for bit: N epochs in one run equal N - 1 epochs (--stop-after) + a resumed one.
Under torchrun the same code runs DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is
the global batch, split evenly over the ranks.

Python API: fit(model, train_loader, val_loader, epochs=..., ...) runs the same recipe on any model (see
erbnn_ext.training.fit). Modules: fit (the epochs), args (command-line arguments and checks), recipe (schedules, optimizer), loop (one epoch),
checkpoint (files and RNG state), metrics (CSV/JSON/PNG), dist (torchrun, device), commands (`erbnn train`,
`erbnn eval`).
"""
from .checkpoint import CHECKPOINT, load_checkpoint_dict
from .commands import add_eval_parser, add_train_parser, cmd_eval, cmd_train, run_eval, run_train
from .dist import Dist
from .errors import CheckpointError, NonFiniteError, OutputError, RankLostError, TrainingError, UsageError
from .fit import fit
from .loop import evaluate, train_one_epoch
from .recipe import default_weight_decay, epoch_schedules, lr_factor

__all__ = ["CHECKPOINT", "CheckpointError", "Dist", "NonFiniteError", "OutputError", "RankLostError", "TrainingError", "UsageError", "add_eval_parser", "add_train_parser", "cmd_eval", "cmd_train",
           "default_weight_decay", "epoch_schedules", "evaluate", "fit", "load_checkpoint_dict", "lr_factor",
           "run_eval", "run_train", "train_one_epoch"]
