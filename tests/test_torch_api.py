"""Every torch API the package names exists in the torch it runs with: CI runs this under torch 2.11 (the
oldest supported) and 2.14, so an API newer than 2.11 fails here rather than in a user's hands."""
import importlib
import os
import re

import torch

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "erbnn_ext")
CHAIN = re.compile(r"\btorch(?:\.[A-Za-z_]\w*)+")


def _chains():
    found = {}
    for root, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    text = f.read()
                for m in CHAIN.finditer(text):
                    found.setdefault(m.group(0), os.path.relpath(path, PKG))
    return found


def _resolve(chain):
    """Follow torch.a.b.c: attributes, importing submodules where an attribute is not there yet."""
    parts = chain.split(".")
    obj, name = torch, "torch"
    for part in parts[1:]:
        name = f"{name}.{part}"
        if not hasattr(obj, part):
            try:
                importlib.import_module(name)
            except ImportError:
                return False
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


# Chains that are not attribute accesses on torch: dispatcher op namespaces are filled by the extension.
def _is_op(chain):
    return chain.startswith(("torch.ops.erbnn", "torch.ops.quantized"))


def test_every_named_torch_api_exists():
    chains = _chains()
    assert len(chains) > 50  # the scan sees the package
    assert not _resolve("torch.library.no_such_api_in_any_release")
    missing = {c: where for c, where in sorted(chains.items()) if not _is_op(c) and not _resolve(c)}
    assert not missing, f"not in torch {torch.__version__}: {missing}"
