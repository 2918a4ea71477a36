"""Run the benchmark cases of overhead.py and conv.py side by side in one process; summarise them."""
import sys
from collections import defaultdict

from tqdm import tqdm

from . import conv, overhead
from .machine import load_average, machine_info
from .timing import measure

SECTIONS = ("overhead", "conv")
# The paper's claim: restoration costs this much less time than IR-Net-style restoration (percent).
PAPER_REDUCTION = {"resnet18": 60.0, "resnet20": 67.0}


def _all_cases(models, batch, device, sections):
    out = []
    if "overhead" in sections:
        out += list(overhead.cases(models, batch, device))
    if "conv" in sections:
        out += list(conv.cases(models, batch, device))
    return out


def run_bench(models, batch=16, device="cpu", sections=SECTIONS, repeat=None, min_run_time=0.2,
              progress=True):
    """Measure every case; return {"machine", "config", "rows", "summary"} (JSON-ready)."""
    config = {"models": list(models), "batch": batch, "device": str(device), "sections": list(sections),
              "repeat": repeat, "min_run_time_s": None if repeat else min_run_time,
              "timer": ("torch.utils.benchmark.Timer.timeit(%d)" % repeat) if repeat
              else "torch.utils.benchmark.Timer.blocked_autorange (median)"}
    machine = machine_info(device)
    built = _all_cases(models, batch, device, sections)
    rows = []
    for row, fn in tqdm(built, desc="erbnn bench", unit="case", disable=None if progress else True,
                        file=sys.stderr, leave=False):
        row.update(measure(fn, repeat=repeat, min_run_time=min_run_time, threads=machine["threads"]))
        rows.append(row)
    machine["load_avg_end"] = load_average()
    return {"machine": machine, "config": config, "rows": rows, "summary": summarise(rows)}


def summarise(rows):
    """Per-model totals (sum of per-call time x layer count) and the ratios the report shows."""
    totals = defaultdict(float)
    macs = defaultdict(int)
    backends = {}
    for r in rows:
        key = (r["section"], r["model"], r.get("mode", ""), r["method"])
        totals[key] += r["time_s"] * r["count"]
        macs[key] += r.get("macs", 0) * r["count"]
        backends.setdefault(key, set()).add(r["backend"])
    # "train": a training step of restoration, fwd+bwd plus ER-BNN's width measurement q (0 for others)
    for (section, model, mode, method), total in list(totals.items()):
        if section == "overhead" and mode == "fwd+bwd":
            q = ("overhead", model, "q", method)
            totals[("overhead", model, "train", method)] = total + totals.get(q, 0.0)
            backends[("overhead", model, "train", method)] = backends[(section, model, mode, method)] | (
                backends.get(q, set()))
    out = {"overhead": [], "conv": []}
    for (section, model, mode, method), total in totals.items():
        entry = {"model": model, "method": method, "total_s": total,
                 "backend": " / ".join(sorted(backends[(section, model, mode, method)]))}
        if section == "overhead":
            entry["mode"] = mode
            irnet = None if mode == "q" else totals.get((section, model, mode, "irnet"))
            entry["reduction_vs_irnet_pct"] = 100.0 * (1.0 - total / irnet) if irnet else None
            entry["paper_reduction_pct"] = PAPER_REDUCTION.get(model)
        else:
            k = (section, model, mode, method)
            entry["gmac_per_s"] = macs[k] / total / 1e9 if total else None
            fp32 = totals.get((section, model, mode, "conv2d_fp32"))
            bf16 = totals.get((section, model, mode, "conv2d_bf16"))
            entry["speedup_vs_fp32"] = fp32 / total if fp32 and total else None
            entry["speedup_vs_bf16"] = bf16 / total if bf16 and total else None
        out[section].append(entry)
    return out
