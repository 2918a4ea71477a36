"""Human-readable tables, the JSON file and the PNG chart of one `erbnn bench` run."""
import json
import os

from . import conv, overhead
from .machine import load_warning, machine_line

JSON_NAME, PNG_NAME = "bench.json", "bench.png"
SUMMARY_MODES = overhead.MODES + ("train",)
MODE_TITLES = {
    "fwd": "forward restoration (no_grad)",
    "fwd+bwd": "forward+backward restoration, training-mode surrogate gradients",
    "q": "ER-BNN's per-step width measurement (two quantiles, training only)",
    "train": "fwd+bwd + q",
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


def _by(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _shape(s):
    return "x".join(str(d) for d in s)


def overhead_tables(result):
    rows, summary, batch = result["rows"], result["summary"]["overhead"], result["config"]["batch"]
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
        table.append([e["model"], e["mode"], overhead.LABELS[e["method"]], e["backend"], _ms(e["total_s"]),
                      "-" if e["method"] == "irnet" or e["mode"] == "q" else _pct(e["reduction_vs_irnet_pct"]),
                      _pct(e["paper_reduction_pct"]) if e["method"] == "erbnn_native" and e["mode"] != "q" else ""])
    out.append("Restoration overhead per model: total over all binary layers (ms); reduction = 1 - t / t(IR-Net);\n"
               "train = fwd+bwd + q (q: ER-BNN's width measurement; IR-Net and ReCU have none)\n"
               + _table(["model", "mode", "method", "backend", "total ms", "reduction vs IR-Net",
                         "paper claim"], table))
    return out


def conv_tables(result):
    rows, summary, batch = result["rows"], result["summary"]["conv"], result["config"]["batch"]
    out = []
    for model in result["config"]["models"]:
        sel = _by(rows, section="conv", model=model)
        if not sel:
            continue
        table = []
        for layer in dict.fromkeys(r["layer"] for r in sel):
            lr = {r["method"]: r for r in _by(sel, layer=layer)}
            first = next(iter(lr.values()))
            t = {m: lr[m]["time_s"] for m in conv.METHODS if m in lr}
            b = t.get("binary_conv2d")
            table.append([layer, first["count"], _shape(first["weight_shape"]), _shape(first["input_shape"]),
                          f"{first['macs'] / 1e6:,.1f}"]
                         + [_us(t[m]) if m in t else "-" for m in conv.METHODS]
                         + [_x(t["conv2d_fp32"] / b) if b and "conv2d_fp32" in t else "n/a",
                            _x(t["conv2d_bf16"] / b) if b and "conv2d_bf16" in t else "n/a"])
        backend = next((r["backend"] for r in sel if r["method"] == "binary_conv2d"), "n/a")
        out.append(f"Binary conv: {model}, batch {batch}; us per call; binary_conv2d backend: {backend}\n"
                   + _table(["layer", "count", "weight", "input", "MMAC"]
                            + [conv.LABELS[m] for m in conv.METHODS] + ["binary vs fp32", "binary vs bf16"],
                            table))
    table = [[e["model"], conv.LABELS[e["method"]], e["backend"], _ms(e["total_s"]), f"{e['gmac_per_s']:,.1f}",
              _x(e["speedup_vs_fp32"]), _x(e["speedup_vs_bf16"])]
             for e in sorted(summary, key=lambda e: (e["model"], conv.METHODS.index(e["method"])))]
    if table:
        out.append("Binary conv per model: total over all binary layers (ms); speedup = t(F.conv2d) / t\n"
                   + _table(["model", "method", "backend", "total ms", "GMAC/s", "fp32 / t", "bf16 / t"], table))
    return out


def render_text(result):
    c = result["config"]
    head = [machine_line(result["machine"]),
            f"Timing: {c['timer']}" + (f", min {c['min_run_time_s']} s per case" if c["min_run_time_s"] else "")]
    warning = load_warning(result["machine"])
    if warning:
        head.append(warning)
    return "\n\n".join(["\n".join(head)] + overhead_tables(result) + conv_tables(result)) + "\n"


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def write_png(result, path):
    """Bar charts: restoration total per model/mode/method; conv total per model/method (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ov, cv = result["summary"]["overhead"], result["summary"]["conv"]
    panels = [p for p in (("overhead", ov), ("conv", cv)) if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1), 4.5), squeeze=False)
    for ax, (name, summary) in zip(axes[0], panels):
        if name == "overhead":
            groups = [(m, mode) for m in result["config"]["models"] for mode in ("fwd", "fwd+bwd", "train")
                      if any(e["model"] == m and e["mode"] == mode for e in summary)]
            methods, labels = overhead.METHODS, overhead.LABELS
            val = lambda g, meth: next((e["total_s"] for e in summary  # noqa: E731
                                        if (e["model"], e["mode"], e["method"]) == (*g, meth)), 0.0)
            ax.set_title("Restoration overhead (all binary layers)")
        else:
            groups = [(m,) for m in result["config"]["models"] if any(e["model"] == m for e in summary)]
            methods, labels = conv.METHODS, conv.LABELS
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
    m = result["machine"]
    fig.suptitle(f"erbnn bench: {m['device_name']}, {m['threads']} threads, batch {result['config']['batch']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result, out_dir):
    """Write bench.json and bench.png into out_dir (created); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jp, pp = os.path.join(out_dir, JSON_NAME), os.path.join(out_dir, PNG_NAME)
    write_json(result, jp)
    write_png(result, pp)
    return jp, pp
