"""What the benchmark ran on: CPU model, ISA path, threads, torch, device (the report's machine line)."""
import os
import platform

import torch

import erbnn_ext


def _cpuinfo(field: str):
    """The value of the first /proc/cpuinfo line for field (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list:
    """The CPU's feature flags as the kernel reports them (Linux /proc/cpuinfo), sorted; [] elsewhere."""
    return sorted((_cpuinfo("flags") or "").split())


def load_average():
    """The 1-minute load average (None where the OS has none): other work on the machine skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(device="cpu") -> dict:
    info = erbnn_ext.backend_info()
    dev = torch.device(device)
    out = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": info.get("cpu_isa"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "erbnn_ext": erbnn_ext.__version__,
        "native": info["native"],
        "cuda_compiled": info["cuda_compiled"],
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": load_average(),
    }
    if not info["native"]:
        out["load_error"] = info.get("load_error")
    return out


def load_warning(m: dict):
    """A warning line when the machine was busy (load above its CPU count) during the run, else None."""
    loads = [v for v in (m.get("load_avg_start"), m.get("load_avg_end")) if v is not None]
    if loads and m.get("cpu_count") and max(loads) > m["cpu_count"]:
        return (f"WARNING: load average {max(loads):.1f} on {m['cpu_count']} CPUs during the run: other processes "
                f"shared the CPUs, timings are unreliable (try --threads 1, or a quiet machine)")
    return None


def machine_line(m: dict) -> str:
    dev = m["device"] if m["device"] == "cpu" else f"{m['device']} ({m['device_name']})"
    return (f"Machine: {m['cpu']} | ISA {m['cpu_isa'] or 'n/a (native not loaded)'} | "
            f"{m['threads']} threads | torch {m['torch']} | device {dev}")
