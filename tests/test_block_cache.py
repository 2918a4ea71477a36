"""The block cache (csrc/cpu/block_cache.h): PyTorch's CPU allocator once enabled, which keeps freed blocks
of >= min_block bytes whole for the next request of their size. Each test runs in a fresh process: the
allocator is process-wide and its counters start when it is first enabled."""
import os
import subprocess
import sys
import textwrap

import pytest

from erbnn_ext import cpu_allocator
from conftest import NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="the block cache is part of the native extension")


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("ERBNN_BLOCK_CACHE", "ERBNN_KEEP_FREED_MEMORY")}
    full_env.update(env)
    header = "import torch\nfrom erbnn_ext import cpu_allocator as ca\ntorch.set_num_threads(1)\n"
    out = subprocess.run([sys.executable, "-c", header + textwrap.dedent(code)], env=full_env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_freed_block_serves_the_next_request_of_its_size():
    _run("""
        assert ca.enable_block_cache(min_block=64 << 10, max_cached=1 << 30)
        a = torch.empty(100_000)                       # 400,000 bytes: the 401,408-byte class (4 KiB pages)
        ptr = a.data_ptr()
        assert ptr % 64 == 0
        del a
        s = ca.block_cache_stats()
        assert (s["cached"], s["allocated"], s["misses"], s["hits"]) == (401_408, 0, 1, 0), s
        b = torch.empty(100_200, dtype=torch.float32)  # 400,800 bytes: the same class
        assert b.data_ptr() == ptr
        c = torch.empty(200_000)                       # another class: a fresh block
        assert c.data_ptr() != ptr
        s = ca.block_cache_stats()
        assert (s["hits"], s["misses"], s["cached"]) == (1, 2, 0), s
        assert s["allocated"] == 401_408 + 802_816 and s["peak_reserved"] == s["allocated"], s
        small = torch.empty(1000)                      # below min_block: malloc's, counted but not cached
        del small
        assert ca.block_cache_stats()["cached"] == 0
        del b, c
        assert ca.block_cache_stats()["cached"] == 401_408 + 802_816
        assert ca.empty_block_cache() == 401_408 + 802_816
        assert ca.block_cache_stats()["cached"] == 0
        assert torch.empty(0).data_ptr() == 0          # empty tensors own no block
    """)


def test_max_cached_bounds_the_unused_blocks():
    _run("""
        assert ca.enable_block_cache(min_block=4096, max_cached=3 << 20)
        blocks = [torch.empty(1 << 18) for _ in range(5)]   # 1 MiB each
        del blocks
        s = ca.block_cache_stats()
        assert s["cached"] == 3 << 20 and s["allocated"] == 0, s
        ca.enable_block_cache(min_block=4096, max_cached=1 << 20)  # new limits trim what is cached
        assert ca.block_cache_stats()["cached"] == 1 << 20
        ca.enable_block_cache(min_block=4096, max_cached=2 << 20)
        small = torch.empty(2048)                                   # 8 KiB: cached at min_block 4096
        del small
        assert ca.block_cache_stats()["cached"] == (1 << 20) + 8192
        ca.enable_block_cache(min_block=64 << 10, max_cached=2 << 20)  # a class below min_block is dropped
        assert ca.block_cache_stats()["cached"] == 1 << 20
    """)


def test_disabled_it_passes_requests_through_and_keeps_tensors_valid():
    _run("""
        assert ca.enable_block_cache()
        kept = torch.arange(1 << 18, dtype=torch.float32)  # allocated while caching, outlives it
        ca.disable_block_cache()
        assert ca.allocator_state()["block_cache"] == "disabled"
        other = torch.empty(1 << 20)
        del other                                           # freed to malloc, not cached
        s = ca.block_cache_stats()
        assert s["enabled"] == 0 and s["cached"] == 0 and s["hits"] == 0 and s["misses"] == 1, s
        assert float(kept.sum()) == float(sum(range(1 << 18)))
        del kept
        assert ca.block_cache_stats()["allocated"] == 0 and ca.block_cache_stats()["cached"] == 0
        assert ca.enable_block_cache() and ca.block_cache_stats()["enabled"] == 1
    """)


def test_onednn_memory_survives_switching_it_on_and_off():
    """oneDNN (ideep) allocates through the CPU allocator installed at the time and frees through the one
    installed when it frees; switching between the cache and PyTorch's allocator in the middle of
    training crashed (free(): invalid pointer) before the cache stayed the allocator once enabled."""
    _run("""
        import torch.nn.functional as F
        from erbnn_ext.benchmarks.train_step import model_builder
        build, hw = model_builder("resnet20")
        torch.manual_seed(0)
        model = build(num_classes=10).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x, y = torch.randn(16, 3, hw, hw), torch.randint(0, 10, (16,))
        for r in range(6):
            ca.disable_block_cache() if r % 2 else ca.enable_block_cache()
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    """, ERBNN_BLOCK_CACHE="1")


def test_switches_and_bad_limits():
    with pytest.raises(ValueError, match="min_block"):
        cpu_allocator.enable_block_cache(min_block=-1)
    out = _run("""
        assert ca.enable_block_cache() is False
        assert ca.keep_freed_memory()
        print(ca.allocator_state()["block_cache"], "|", ca.allocator_line())
    """, ERBNN_BLOCK_CACHE="0")
    assert out.startswith("ERBNN_BLOCK_CACHE=0 |") and "block cache off" in out
    out = _run("""
        assert ca.keep_freed_memory() is False
        print(ca.block_cache_stats().get("enabled", 0))
    """, ERBNN_KEEP_FREED_MEMORY="0")
    assert out.split() == ["0"]


def test_keep_freed_memory_installs_it_and_fork_children_allocate():
    _run("""
        import os
        assert ca.keep_freed_memory() and ca.block_cache_stats()["enabled"] == 1
        assert "block cache on" in ca.allocator_line()
        pid = os.fork()
        if pid == 0:
            x = torch.randn(1 << 18) * 2
            os._exit(0 if torch.isfinite(x).all() else 3)
        assert os.waitpid(pid, 0)[1] == 0
    """)


def test_the_profiler_still_sees_cpu_memory():
    _run("""
        from torch.profiler import profile, ProfilerActivity
        assert ca.enable_block_cache()
        torch.empty(1 << 18)  # the block is cached before profiling, and served from there inside
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            x = torch.empty(1 << 18)
            del x
        sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        assert (1 << 20) in sizes and -(1 << 20) in sizes, sizes
    """)


_STEP = """
    import hashlib, sys
    import torch.nn.functional as F
    from erbnn_ext.benchmarks.train_step import float_twin, model_builder
    if sys.argv[1] == "cache":
        assert ca.enable_block_cache()
    build, hw = model_builder("resnet20")
    torch.manual_seed(0)
    model = build(num_classes=10).train()
    if sys.argv[2] == "float":
        model = float_twin(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, hw, hw), torch.randint(0, 10, (8,))
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 1:  # the figures of the steps after the warm-up (the optimizer's state is made in step 0)
            ca.reset_block_cache_peaks()
            warm_misses = ca.block_cache_stats().get("misses", 0)
    h = hashlib.sha256()
    for t in list(model.parameters()) + list(model.buffers()):
        h.update(t.detach().contiguous().numpy().tobytes())
    s = ca.block_cache_stats()
    print(h.hexdigest(), s.get("peak_reserved", 0), s.get("peak_allocated", 0), s.get("misses", 0) - warm_misses)
"""


def _step(cache, model):
    full_env = {k: v for k, v in os.environ.items() if k != "ERBNN_BLOCK_CACHE"}
    if cache != "cache":  # the benchmark modules install it on import (keep_freed_memory)
        full_env["ERBNN_BLOCK_CACHE"] = "0"
    header = "import torch\nfrom erbnn_ext import cpu_allocator as ca\ntorch.set_num_threads(1)\n"
    out = subprocess.run([sys.executable, "-c", header + textwrap.dedent(_STEP), cache, model], env=full_env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    digest, reserved, allocated, misses = out.stdout.split()
    return digest, int(reserved), int(allocated), int(misses)


def test_training_with_the_cache_equals_training_without():
    assert _step("cache", "er")[0] == _step("none", "er")[0]


def test_training_step_reserves_what_its_float_twin_does():
    """After two warm-up steps every block a step asks for is cached (no misses), and the memory it holds,
    live tensors plus cached blocks, is within 5% of the float twin's: the per-size reuse is not split
    by the ER layers' small tensors (packed signs, statistics), as malloc's heap was."""
    _, er_reserved, er_live, er_misses = _step("cache", "er")
    _, fl_reserved, fl_live, _ = _step("cache", "float")
    assert er_misses == 0
    assert er_reserved <= 1.05 * fl_reserved, (er_reserved, fl_reserved)
    assert er_live <= 1.05 * fl_live, (er_live, fl_live)
    assert er_reserved <= 1.25 * er_live, (er_reserved, er_live)


def test_threads_allocating_at_once_get_their_own_blocks():
    """Four threads allocate and free blocks of the same sizes at once (torch ops release the GIL): every
    result is right, and when they are done every block is back in the cache and none is live."""
    _run("""
        import threading
        assert ca.enable_block_cache()
        before = ca.block_cache_stats()["allocated"]
        errors = []

        def work(seed):
            g = torch.Generator().manual_seed(seed)
            for _ in range(200):
                a = torch.randn(1 << 16, generator=g)      # 256 KiB blocks, shared size class
                b = a * 2 + 1
                c = torch.empty(1 << 16).copy_(b)
                if not torch.equal(c, a * 2 + 1):
                    errors.append(seed)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        s = ca.block_cache_stats()
        assert not errors, errors
        assert s["allocated"] == before, s
        assert s["hits"] > 0 and s["cached"] % 4096 == 0 and s["cached"] > 0, s
    """)
