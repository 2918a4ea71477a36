"""Per-epoch outputs: metrics.csv, metrics.json (config, history, final and best accuracy), curves.png."""
import csv
import json
import os
from pathlib import Path

COLUMNS = ("epoch", "lr", "p", "t", "tau", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
           "train_samples", "test_samples")


def write_metrics(out: Path, history: list, config: dict) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in COLUMNS})
    best = max(history, key=lambda r: r["test_acc"]) if history else None
    summary = {"config": config, "epochs_done": len(history), "history": history,
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "best_test_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")


def plot(out: Path, history: list, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "loss", "cross-entropy"),
                           (fig.add_subplot(1, 2, 2), "acc", "top-1 (%)")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", label="train", markersize=3)
        ax.plot(ep, [r[f"test_{key}"] for r in history], "s-", label="test", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)


def epoch_line(row: dict, epochs: int, sched: dict) -> str:
    """The line printed after each epoch."""
    sched_txt = " ".join(f"{k}={v:.4g}" for k, v in sched.items())
    return (f"epoch {row['epoch']}/{epochs} lr={row['lr']:.4g} {sched_txt} train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% | "
            f"{row['epoch_time_s']:.1f}s")
