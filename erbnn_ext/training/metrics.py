"""Per-epoch outputs: metrics.csv, metrics.json (config, history, final and best accuracy), curves.png."""
import csv
import io
import json
from pathlib import Path

from .checkpoint import atomic_write

COLUMNS = ("epoch", "lr", "p", "t", "tau", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
           "train_samples", "test_samples")


def write_metrics(out: Path, history: list, config: dict) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in COLUMNS})
    atomic_write(out / "metrics.csv", lambda tmp: tmp.write_text(buf.getvalue(), newline=""))
    scored = [r for r in history if r.get("test_acc") is not None]
    best = max(scored, key=lambda r: r["test_acc"]) if scored else None
    summary = {"config": config, "epochs_done": len(history), "history": history,
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "best_test_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None}
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))


def plot(out: Path, history: list, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    have_test = any(r.get("test_acc") is not None for r in history)
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "loss", "cross-entropy"),
                           (fig.add_subplot(1, 2, 2), "acc", "top-1 (%)")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", label="train", markersize=3)
        if have_test:
            ax.plot(ep, [r.get(f"test_{key}") for r in history], "s-", label="test", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(out / "curves.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def epoch_line(row: dict, epochs: int, sched: dict) -> str:
    """The line printed after each epoch."""
    sched_txt = "".join(f" {k}={v:.4g}" for k, v in sched.items())
    test = (f" | test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%" if row.get("test_acc") is not None
            else "")
    return (f"epoch {row['epoch']}/{epochs} lr={row['lr']:.4g}{sched_txt} train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}%{test} | {row['epoch_time_s']:.1f}s")
