"""Run the benchmark cases of overhead.py, binary_conv.py and train_step.py side by side in one process,
one section after the other; summarise them. The result so far is handed out after every case (on_update),
so that a crash or an interrupt keeps what was measured."""
import sys
import time
from collections import defaultdict

from .. import _extras
from . import binary_conv, overhead, train_step
from .machine import load_average, machine_info

SECTIONS = ("overhead", "conv", "train_step")
TRAIN_STEP_THREADS = 1  # the training-step section's default (its goals are 1-thread figures: steadier on a shared machine)
_CASES = {"overhead": overhead.cases, "conv": binary_conv.cases, "train_step": train_step.cases}


def _case_name(row):
    return " ".join(str(v) for v in (row["model"], row["layer"], row.get("mode"), row["method"]) if v)


class Progress:
    """Per-case progress on stderr: a tqdm bar on a terminal (the bench extra), otherwise one line per
    case (a log file or CI shows the run advancing); nothing when disabled."""

    def __init__(self, enabled, stream=None):
        self.stream = stream or sys.stderr
        tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.kind = None if not enabled else ("bar" if tty and _extras.available("tqdm") else "lines")
        self.bar = None

    def section(self, name, total):
        self.name, self.total, self.done, self.t0 = name, total, 0, time.perf_counter()
        if self.kind == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"erbnn bench: {name}", unit="case", file=self.stream, leave=False)

    def cases_done(self, rows):
        for r in rows:
            self.done += 1
            if self.kind == "lines":
                self.stream.write(f"erbnn bench: {self.name} {self.done}/{self.total} {_case_name(r)}: "
                                  f"{r['time_s'] * 1e6:,.1f} us ({time.perf_counter() - self.t0:.0f} s)\n")
                self.stream.flush()
        if self.bar is not None:
            self.bar.update(len(rows))

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_bench(models, batch=16, device="cpu", sections=SECTIONS, repeat=None, min_run_time=0.2,
              progress=True, threads=None, quick=False, clock="wall", on_update=None):
    """Measure every case, section by section; return {"machine", "config", "rows", "summary", "complete",
    "sections_done"} (JSON-ready). threads: as --threads (None: torch's count, and TRAIN_STEP_THREADS for
    the training-step section). quick: the result is marked as a smoke run (config["quick"]), which the
    report shows instead of claims. on_update(result, finished_section): called with the result so far
    before the first case, after every measured case (finished_section None) and when a section ends (its
    name); result["complete"] stays False until every section is measured, and the summary covers the
    finished sections only."""
    step_threads = threads or TRAIN_STEP_THREADS
    sections = [s for s in SECTIONS if s in sections]
    config = {"models": list(models), "batch": batch, "device": str(device), "sections": list(sections),
              "quick": bool(quick), "smoke": bool(quick) or (repeat is not None and repeat < 5),
              "train_step_threads": step_threads if "train_step" in sections else None,
              "repeat": repeat, "min_run_time_s": None if repeat else min_run_time, "clock": clock,
              "timer": ("torch.utils.benchmark.Timer.timeit(%d)" % repeat) if repeat
              else "torch.utils.benchmark.Timer.blocked_autorange (median)"}
    machine = machine_info(device)
    result = {"machine": machine, "config": config, "rows": [], "summary": summarise([]), "complete": False,
              "sections_done": []}
    update = on_update or (lambda result, finished: None)
    update(result, None)
    bar = Progress(progress)
    try:
        for section in sections:
            built = list(_CASES[section](models, batch, device))
            bar.section(section, len(built))
            t0 = time.perf_counter()
            for group in train_step.pairs(built):  # a training-step case and its float twin side by side
                n = step_threads if section == "train_step" else machine["threads"]
                rows = [{**r, "threads": n} for r in train_step.measure_group(
                    group, repeat=repeat, min_run_time=min_run_time * len(group), threads=n, clock=clock)]
                binary_conv.add_engines(rows)
                result["rows"] += rows
                machine["load_avg_end"] = load_average()
                bar.cases_done(rows)
                update(result, None)
            del built
            result["sections_done"].append(section)
            result.setdefault("section_time_s", {})[section] = round(time.perf_counter() - t0, 1)
            done = set(result["sections_done"])
            result["summary"] = summarise([r for r in result["rows"] if r["section"] in done])
            result["complete"] = len(done) == len(sections)
            update(result, section)
    finally:
        bar.close()
    return result


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
