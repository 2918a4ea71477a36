"""Human-readable tables, the JSON file and the PNG chart of one `erbnn bench` run."""
import json
import os

from . import binary_conv, overhead, train_step
from .machine import load_warning, machine_line

JSON_NAME, PNG_NAME = "bench.json", "bench.png"
SUMMARY_MODES = overhead.MODES
MODE_TITLES = {
    "fwd": "forward restoration (no_grad)",
    "fwd+bwd": "forward+backward restoration, training-mode surrogate gradients",
    "train": "a training step's restoration: ER-BNN's fused training ops (incl. the two quantiles of its "
             "adaptive width) + backward; IR-Net / ReCU: their fwd+bwd",
}


def _table(headers, rows):
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells])


def _us(s):
    return f"{s * 1e6:,.1f}"


def _ms(s):
    return f"{s * 1e3:,.3f}"


def _pct(v):
    return "n/a" if v is None else f"{v:.1f}%"


def _x(v):
    return "n/a" if v is None else f"{v:.2f}x"


SMOKE = "smoke"  # the cell text of a ratio that a smoke run (--quick) cannot support
SMOKE_NOTE = ("SMOKE RUN ({calls} calls per case, batch {batch}; --quick or a --repeat below 5): the code paths "
              "ran, but these times are not measurements; reductions and speed-ups are left out, the paper's "
              "claims shown for reference")


def is_smoke(result):
    return bool(result["config"].get("smoke", result["config"].get("quick", False)))


def _smoke_note(result):
    c = result["config"]
    return SMOKE_NOTE.format(calls=c.get("repeat"), batch=c["batch"])


def _by(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _shape(s):
    return "x".join(str(d) for d in s)


def overhead_tables(result):
    rows, summary, batch = result["rows"], result["summary"]["overhead"], result["config"]["batch"]
    smoke = is_smoke(result)
    out = []
    for model in result["config"]["models"]:
        for mode in overhead.MODES:
            sel = _by(rows, section="overhead", model=model, mode=mode)
            if not sel:
                continue
            methods = [m for m in overhead.METHODS if _by(sel, method=m)]
            layers = list(dict.fromkeys(r["layer"] for r in sel))
            table = []
            for layer in layers:
                lr = {r["method"]: r for r in _by(sel, layer=layer)}
                first = next(iter(lr.values()))
                table.append([layer, first["count"], _shape(first["weight_shape"]), _shape(first["input_shape"])]
                             + [_us(lr[m]["time_s"]) if m in lr else "-" for m in methods])
            tot = {e["method"]: e for e in summary if e["model"] == model and e["mode"] == mode}
            table.append(["TOTAL (x count)", "", "", ""] + [_us(tot[m]["total_s"]) for m in methods])
            out.append(f"Restoration overhead: {model}, {mode}: {MODE_TITLES[mode]}, batch {batch}; us per call\n"
                       + _table(["layer", "count", "weight", "input"] + [overhead.LABELS[m] for m in methods],
                                table))
    table = []
    for e in sorted(summary, key=lambda e: (e["model"], SUMMARY_MODES.index(e["mode"]),
                                              overhead.METHODS.index(e["method"]))):
        reduction = ("-" if e["method"] == "irnet" else
                     SMOKE if smoke else _pct(e["reduction_vs_irnet_pct"]))
        table.append([e["model"], e["mode"], overhead.LABELS[e["method"]], e["backend"], _ms(e["total_s"]),
                      reduction,
                      _pct(e["paper_reduction_pct"]) if e["method"] == "erbnn_native" else ""])
    if not table:
        return out
    out.append("Restoration overhead per model: total over all binary layers (ms); reduction = 1 - t / t(IR-Net);\n"
               "train = ER-BNN's fused training ops (restoration + its width measurement) + backward; IR-Net and "
               "ReCU have no width measurement: their fwd+bwd; paper claim: "
               "the paper's reduction for restoration\n" + (_smoke_note(result) + "\n" if smoke else "")
               + _table(["model", "mode", "method", "backend", "total ms", "reduction vs IR-Net",
                         "paper claim"], table))
    return out


def conv_tables(result):
    rows, summary, batch = result["rows"], result["summary"]["conv"], result["config"]["batch"]
    smoke = is_smoke(result)
    ratio = (lambda v: SMOKE) if smoke else _x  # noqa: E731
    out = []
    for model in result["config"]["models"]:
        sel = _by(rows, section="conv", model=model)
        if not sel:
            continue
        table = []
        for layer in dict.fromkeys(r["layer"] for r in sel):
            lr = {r["method"]: r for r in _by(sel, layer=layer)}
            first = next(iter(lr.values()))
            t = {m: lr[m]["time_s"] for m in binary_conv.METHODS if m in lr}
            b = t.get("binary_conv2d")
            table.append([layer, first["count"], _shape(first["weight_shape"]), _shape(first["input_shape"]),
                          f"{first['macs'] / 1e6:,.1f}"]
                         + [_us(t[m]) if m in t else "-" for m in binary_conv.METHODS]
                         + [ratio(t["conv2d_fp32"] / b) if b and "conv2d_fp32" in t else "n/a",
                            ratio(t["conv2d_bf16"] / b) if b and "conv2d_bf16" in t else "n/a"])
        backend = next((r["backend"] for r in sel if r["method"] == "binary_conv2d"), "n/a")
        engines = {r["layer"]: r["engine"] for r in sel if r["method"] == "binary_conv2d" and "engine" in r}
        if engines:  # the CPU conv engine each layer ran on
            for line in table:
                line.append(engines.get(line[0], "-"))
        out.append(f"Binary conv: {model}, batch {batch}; us per call; binary_conv2d backend: {backend}\n"
                   + _table(["layer", "count", "weight", "input", "MMAC"]
                            + [binary_conv.LABELS[m] for m in binary_conv.METHODS] + ["binary vs fp32", "binary vs bf16"]
                            + (["engine"] if engines else []), table))
        whys = {r["layer"]: r["engine_why"] for r in sel if r.get("engine_why")}
        if whys:
            out.append("CPU conv engine per layer (auto: each shape's first call times the candidates):\n"
                       + "\n".join(f"  {layer}: {engines.get(layer)} ({why})" for layer, why in whys.items()))
    table = [[e["model"], binary_conv.LABELS[e["method"]], e["backend"], _ms(e["total_s"]),
              SMOKE if smoke else f"{e['gmac_per_s']:,.1f}", ratio(e["speedup_vs_fp32"]), ratio(e["speedup_vs_bf16"])]
             for e in sorted(summary, key=lambda e: (e["model"], binary_conv.METHODS.index(e["method"])))]
    if table:
        out.append("Binary conv per model: total over all binary layers (ms); speedup = t(F.conv2d) / t\n"
                   + (_smoke_note(result) + "\n" if smoke else "")
                   + _table(["model", "method", "backend", "total ms", "GMAC/s", "fp32 / t", "bf16 / t"], table))
    return out


def train_step_tables(result):
    summary = result["summary"].get("train_step")
    if not summary or not (summary["layers"] or summary["models"]):
        return []
    c = result["config"]
    text = train_step.format_tables(summary, c["batch"], smoke=is_smoke(result))
    return [f"(training-step section: {c.get('train_step_threads')} thread(s))\n" + text]


SECTION_TABLES = {"overhead": overhead_tables, "conv": conv_tables, "train_step": train_step_tables}


def head_text(result):
    """The machine and timing lines printed before the first section."""
    c = result["config"]
    head = [machine_line(result["machine"]),
            f"Timing: {c['timer']}" + (f", min {c['min_run_time_s']} s per case" if c["min_run_time_s"] else "")
            + (", clock: CPU time of the calling thread" if c.get("clock") == "thread" else "")]
    if is_smoke(result):
        head.append(_smoke_note(result))
    return "\n".join(head) + "\n"


def section_text(result, section):
    """The tables of one finished section (printed as soon as it ends)."""
    tables = SECTION_TABLES[section](result)
    return "\n" + "\n\n".join(tables) + "\n" if tables else ""


def tail_text(result):
    """After the last section: the busy-machine warning, if any."""
    warning = load_warning(result["machine"])
    return "\n" + warning + "\n" if warning else ""


def render_text(result):
    """The whole report of a finished (or partial) result: head, every finished section's tables, tail."""
    return (head_text(result) + "".join(section_text(result, s) for s in result.get("sections_done", SECTION_TABLES))
            + tail_text(result))


def write_json(result, path):
    """Write atomically (a temporary file renamed over path): a reader, or a run killed while writing,
    never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _totals_panel(ax, result, name, summary):
    if name == "overhead":
        groups = [(m, mode) for m in result["config"]["models"] for mode in ("fwd", "fwd+bwd", "train")
                  if any(e["model"] == m and e["mode"] == mode for e in summary)]
        methods, labels = overhead.METHODS, overhead.LABELS
        val = lambda g, meth: next((e["total_s"] for e in summary  # noqa: E731
                                    if (e["model"], e["mode"], e["method"]) == (*g, meth)), 0.0)
        ax.set_title("Restoration overhead (all binary layers)")
    else:
        groups = [(m,) for m in result["config"]["models"] if any(e["model"] == m for e in summary)]
        methods, labels = binary_conv.METHODS, binary_conv.LABELS
        val = lambda g, meth: next((e["total_s"] for e in summary  # noqa: E731
                                    if (e["model"], e["method"]) == (g[0], meth)), 0.0)
        ax.set_title("Binary layers' convs")
    width = 0.8 / len(methods)
    for i, meth in enumerate(methods):
        ax.bar([g + i * width for g in range(len(groups))], [val(g, meth) * 1e3 for g in groups],
               width, label=labels[meth])
    ax.set_xticks([g + width * (len(methods) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(["\n".join(g) for g in groups])
    ax.set_ylabel("ms per step (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)


def _claims_panel(ax, result, summary, smoke):
    """ER-BNN native's reduction vs IR-Net per model and mode, beside the paper's claim."""
    models = [m for m in result["config"]["models"] if any(e["model"] == m for e in summary)]
    modes = ("fwd", "fwd+bwd", "train")
    width = 0.8 / (len(modes) + 1)
    for i, mode in enumerate(modes):
        vals = [next((e["reduction_vs_irnet_pct"] or 0.0 for e in summary if (e["model"], e["mode"], e["method"])
                      == (m, mode, "erbnn_native")), 0.0) for m in models]
        ax.bar([g + i * width for g in range(len(models))], [0.0 if smoke else v for v in vals], width,
               label=f"measured, {mode}" if not smoke else None)
    claims = [overhead_claim(m) for m in models]
    ax.bar([g + len(modes) * width for g in range(len(models))], [c or 0.0 for c in claims], width,
           color="none", edgecolor="black", hatch="//", label="paper's claim")
    for g, c in enumerate(claims):
        if c is not None:
            ax.annotate(f"{c:.0f}%", (g + len(modes) * width, c), ha="center", va="bottom", fontsize=8)
    ax.set_xticks([g + width * len(modes) / 2 for g in range(len(models))])
    ax.set_xticklabels(models)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("restoration time saved vs IR-Net (%)")
    ax.set_title("ER-BNN restoration vs IR-Net" + (": smoke run, not measured" if smoke else ""))
    if smoke:
        ax.text(0.5, 0.5, "SMOKE RUN\nnot a measurement", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="red", alpha=0.6)
    ax.legend(fontsize=8)


def overhead_claim(model):
    return overhead.PAPER_REDUCTION.get(model)


def _train_step_panel(ax, summary, smoke):
    """ER / float ratio per layer shape and per model (1.0 = the cost of float)."""
    bars = [(f"{e['model']}\n{e['layer']}", e["ratio"]) for e in summary["layers"]]
    bars += [(f"{e['model']}\nwhole model", e["ratio"]) for e in summary["models"]]
    colors = ["tab:blue"] * len(summary["layers"]) + ["tab:orange"] * len(summary["models"])
    ax.bar(range(len(bars)), [v for _, v in bars], color=colors, alpha=0.35 if smoke else 1.0)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b for b, _ in bars], rotation=90, fontsize=6)
    ax.set_ylabel("training step, ER / float (x)")
    gm = summary["layer_ratio_geomean"]
    ax.set_title("Training step vs float" + ("" if smoke or gm is None else f" (layers' geomean {gm:.2f}x)"))
    if smoke:
        ax.text(0.5, 0.5, "SMOKE RUN\nnot a measurement", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="red", alpha=0.6)


def write_png(result, path):
    """Bar charts: restoration total per model/mode/method, the reduction vs IR-Net beside the paper's claim,
    conv total per model/method (log scale), training-step ratios vs float. A smoke run says so on the chart."""
    from .._extras import require

    matplotlib = require("matplotlib", "bench.png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    smoke = is_smoke(result)
    ts = summary.get("train_step") or {"layers": [], "models": []}
    panels = []
    if summary["overhead"]:
        panels += [("overhead", summary["overhead"]), ("claims", summary["overhead"])]
    if summary["conv"]:
        panels.append(("conv", summary["conv"]))
    if ts["layers"] or ts["models"]:
        panels.append(("train_step", ts))
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 5), squeeze=False)
    for ax, (name, data) in zip(axes[0], panels):
        if name == "claims":
            _claims_panel(ax, result, data, smoke)
        elif name == "train_step":
            _train_step_panel(ax, data, smoke)
        else:
            _totals_panel(ax, result, name, data)
    m = result["machine"]
    title = f"erbnn bench: {m['device_name']}, {m['threads']} threads, batch {result['config']['batch']}"
    if smoke:
        title = "SMOKE RUN (--quick): not a measurement | " + title
    fig.suptitle(title, fontsize=10, color="red" if smoke else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result, out_dir):
    """Write bench.json and, when matplotlib (the bench extra) is installed, bench.png into out_dir
    (created); return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    jp, pp = os.path.join(out_dir, JSON_NAME), os.path.join(out_dir, PNG_NAME)
    write_json(result, jp)
    if not can_plot():
        return (jp,)
    write_png(result, pp)
    return jp, pp


def can_plot():
    from .._extras import available
    return available("matplotlib")
