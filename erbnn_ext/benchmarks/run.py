"""Run the benchmark cases of overhead.py, binary_conv.py and train_step.py side by side in one process;
summarise them."""
import sys
from collections import defaultdict

from tqdm import tqdm

from . import binary_conv, overhead, train_step
from .machine import load_average, machine_info

SECTIONS = ("overhead", "conv", "train_step")
TRAIN_STEP_THREADS = 1  # the training-step section's default (its goals are 1-thread figures: steadier on a shared machine)


def _all_cases(models, batch, device, sections):
    out = []
    if "overhead" in sections:
        out += list(overhead.cases(models, batch, device))
    if "conv" in sections:
        out += list(binary_conv.cases(models, batch, device))
    if "train_step" in sections:
        out += list(train_step.cases(models, batch, device))
    return out


def run_bench(models, batch=16, device="cpu", sections=SECTIONS, repeat=None, min_run_time=0.2,
              progress=True, threads=None, quick=False, clock="wall"):
    """Measure every case; return {"machine", "config", "rows", "summary"} (JSON-ready). threads: as
    --threads (None: torch's count, and TRAIN_STEP_THREADS for the training-step section). quick: the
    result is marked as a smoke run (config["quick"]), which the report shows instead of claims."""
    step_threads = threads or TRAIN_STEP_THREADS
    config = {"models": list(models), "batch": batch, "device": str(device), "sections": list(sections),
              "quick": bool(quick), "smoke": bool(quick) or (repeat is not None and repeat < 5), "train_step_threads": step_threads if "train_step" in sections else None,
              "repeat": repeat, "min_run_time_s": None if repeat else min_run_time, "clock": clock,
              "timer": ("torch.utils.benchmark.Timer.timeit(%d)" % repeat) if repeat
              else "torch.utils.benchmark.Timer.blocked_autorange (median)"}
    machine = machine_info(device)
    built = _all_cases(models, batch, device, sections)
    rows = []
    bar = tqdm(total=len(built), desc="erbnn bench", unit="case", disable=None if progress else True,
               file=sys.stderr, leave=False)
    for group in train_step.pairs(built):  # a training-step case and its float twin side by side
        n = step_threads if group[0][0]["section"] == "train_step" else machine["threads"]
        rows += [{**r, "threads": n} for r in train_step.measure_group(
            group, repeat=repeat, min_run_time=min_run_time * len(group), threads=n, clock=clock)]
        bar.update(len(group))
    bar.close()
    machine["load_avg_end"] = load_average()
    return {"machine": machine, "config": config, "rows": rows, "summary": summarise(rows)}


def summarise(rows):
    """Per-model totals (sum of per-call time x layer count) and the ratios the report shows."""
    totals = defaultdict(float)
    macs = defaultdict(int)
    backends = {}
    for r in rows:
        if r["section"] == "train_step":
            continue
        key = (r["section"], r["model"], r.get("mode", ""), r["method"])
        totals[key] += r["time_s"] * r["count"]
        macs[key] += r.get("macs", 0) * r["count"]
        backends.setdefault(key, set()).add(r["backend"])
    # "train" of a baseline (no width measurement: measured for ER-BNN only) is its fwd+bwd
    for (section, model, mode, method), total in list(totals.items()):
        train = ("overhead", model, "train", method)
        if section == "overhead" and mode == "fwd+bwd" and train not in totals:
            totals[train] = total
            backends[train] = backends[(section, model, mode, method)]
    out = {"overhead": [], "conv": [], "train_step": train_step.summarise(rows)}
    for (section, model, mode, method), total in totals.items():
        entry = {"model": model, "method": method, "total_s": total,
                 "backend": " / ".join(sorted(backends[(section, model, mode, method)]))}
        if section == "overhead":
            entry["mode"] = mode
            irnet = totals.get((section, model, mode, "irnet"))
            entry["reduction_vs_irnet_pct"] = 100.0 * (1.0 - total / irnet) if irnet else None
            entry["paper_reduction_pct"] = overhead.PAPER_REDUCTION.get(model)
        else:
            k = (section, model, mode, method)
            entry["gmac_per_s"] = macs[k] / total / 1e9 if total else None
            fp32 = totals.get((section, model, mode, "conv2d_fp32"))
            bf16 = totals.get((section, model, mode, "conv2d_bf16"))
            entry["speedup_vs_fp32"] = fp32 / total if fp32 and total else None
            entry["speedup_vs_bf16"] = bf16 / total if bf16 and total else None
        out[section].append(entry)
    return out
