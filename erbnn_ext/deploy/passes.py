"""deploy.freeze's torch.fx passes over a model whose ER layers are already frozen (deploy/layers.py): the
BatchNorm folding's pairing, the block-tail fusion, the chaining of packed signs between binary convs
(through 2x2 max-pools), and the generated forwards they install (FrozenForward: kept as data, so a frozen
model pickles and regenerates them on load)."""
import copy
import inspect
import operator
import warnings

import torch
import torch.fx

from .._common import pair
from ..nn.layers import ERBinaryConv2d, ERBinaryLinear
from ..nn.rprelu import RPReLU
from .layers import FrozenBinaryConv2d, _bn_affine, _FrozenBinary


_FOLDABLE = (ERBinaryConv2d, ERBinaryLinear, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)


class _LeafTracer(torch.fx.Tracer):
    """Traces only into modules that hold an ER layer or a BatchNorm below them; everything else (RPReLU,
    shortcuts, pooling...) is a leaf, so their own control flow does not stop the trace."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, _FOLDABLE):
            return True
        return not any(isinstance(c, _FOLDABLE) for c in m.modules() if c is not m)


def _bn_followers(model):
    """{layer name: BatchNorm name} (ER layers, float Conv2d: _foldable_into) where the BatchNorm's only input is that layer's output, the layer
    output feeds nothing else, and each is called exactly once. Empty if the model cannot be traced."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # data-dependent control flow etc.: freeze still works, without folding
        warnings.warn(f"deploy.freeze: could not trace the model to find BatchNorms to fold ({exc}); "
                      f"BatchNorms stay separate")
        return {}
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    pairs = {}
    for target, nodes in calls.items():
        bn = model.get_submodule(target)
        if not isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) or len(nodes) != 1:
            continue
        src = nodes[0].args[0] if nodes[0].args else None
        while (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
               and isinstance(model.get_submodule(src.target), torch.nn.Identity)):
            src = src.args[0]  # an Identity in between (e.g. "no pool here") changes nothing
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and len(calls.get(src.target, [])) == 1 and bn.track_running_stats
                and _foldable_into(model.get_submodule(src.target), bn)):
            pairs[src.target] = target
    return pairs


def _foldable_into(layer, bn):
    """A BatchNorm folds into an ER layer's epilogue, and into a float Conv2d's weights (a stem or a
    downsampling shortcut: one pass over the activations less)."""
    if isinstance(layer, (ERBinaryConv2d, ERBinaryLinear)):
        return True
    return (type(layer) is torch.nn.Conv2d and isinstance(bn, torch.nn.BatchNorm2d)
            and bn.running_var is not None and bn.num_features == layer.out_channels)


def _fold_into_conv(conv, bn):
    """conv with bn folded: weight * a (per output channel), bias * a + c, computed in float64."""
    a, c = _bn_affine(bn)
    with torch.no_grad():
        w = conv.weight.double() * a.to(conv.weight.device).view(-1, 1, 1, 1)
        b = c.to(conv.weight.device) + (conv.bias.double() * a.to(conv.weight.device) if conv.bias is not None else 0)
        conv.weight = torch.nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
        conv.bias = torch.nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)


class _OneLevelTracer(torch.fx.Tracer):
    """Traces one module's own forward: every submodule call stays a call_module node."""

    def is_leaf_module(self, m, qualname):
        return True


def _single_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _module(parent, node, cls):
    if node is None or node.op != "call_module":
        return None
    m = parent.get_submodule(node.target)
    return m if isinstance(m, cls) else None


def _call_counts(graph):
    """module target -> how many call_module nodes call it (a module called twice is shared: not fused)."""
    calls = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def _fuse_graph(parent, graph, replay=None):
    """Rewrites, in `parent`'s traced graph, each  FrozenBinaryConv2d -> [Identity]* -> [+ residual] ->
    RPReLU  chain whose intermediate values have no other user into one call of the conv with the
    residual and the RPReLU in its epilogue. Returns the fused convs' targets. replay: the targets of an
    earlier run whose layers already hold the RPReLU (a loaded model): the same graph edits, no state change."""
    calls = _call_counts(graph)
    targets = []
    for node in list(graph.nodes):
        conv = _module(parent, node, FrozenBinaryConv2d)
        if conv is None or (node.target not in replay if replay is not None else conv.act is not None):
            continue
        if calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
            continue
        chain, cur = [node], node
        while _module(parent, _single_user(cur), torch.nn.Identity) is not None:
            cur = _single_user(cur)
            chain.append(cur)
        residual, nxt = None, _single_user(cur)
        if (nxt is not None and nxt.op == "call_function" and nxt.target in (operator.add, torch.add)
                and len(nxt.args) == 2 and not nxt.kwargs and sum(a is cur for a in nxt.args) == 1):
            other = nxt.args[1] if nxt.args[0] is cur else nxt.args[0]
            if isinstance(other, torch.fx.Node):
                residual, cur = other, nxt
                chain.append(cur)
        act_node = _single_user(cur)
        rprelu = _module(parent, act_node, RPReLU)
        if rprelu is None or len(act_node.args) != 1 or act_node.kwargs:
            continue
        if replay is None:
            conv.fuse_rprelu(rprelu)
        with graph.inserting_before(act_node):
            fused = graph.call_module(node.target, (node.args[0],) + ((residual,) if residual is not None else ()))
        act_node.replace_all_uses_with(fused)
        for n in [act_node] + chain[::-1]:
            graph.erase_node(n)
        targets.append(node.target)
    return targets


def _fuse_tails(model):
    """deploy.freeze's tail fusion, module by module: a module that calls a frozen conv gets a forward
    generated from its rewritten graph (same submodules, same state), where it can be traced."""
    parents = [m for m in model.modules() if any(isinstance(c, FrozenBinaryConv2d) for c in m.children())]
    fused = 0
    for parent in parents:
        try:
            graph = _OneLevelTracer().trace(parent)
        except Exception:  # data-dependent control flow: this module keeps its unfused forward
            continue
        if any(n.op == "get_attr" and not _has_attr(parent, n.target) for n in graph.nodes):
            continue  # the generated code would need attributes (traced constants) the module lacks
        targets = _fuse_graph(parent, graph)  # (sets the fused convs' RPReLU: the forward must follow)
        if not targets:
            continue
        _install(parent, ("fuse", tuple(targets)), _compile(parent, graph))
        fused += 1
    return fused


def _has_attr(module, target):
    obj = module
    for part in target.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


class _ChainTracer(torch.fx.Tracer):
    """Traces the whole model down to the frozen convs: a module with none below it is a leaf."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, _FrozenBinary):
            return True
        return not any(isinstance(c, FrozenBinaryConv2d) for c in m.modules() if c is not m)


def _is_pool2x2(m):
    return (isinstance(m, torch.nn.MaxPool2d) and pair(m.kernel_size) == (2, 2)
            and pair(m.stride if m.stride is not None else m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _monotone_bn(bn):
    return (isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None
            and bn.weight is not None and bool((_bn_affine(bn)[0] > 0).all()))


def _monotone_rprelu(act):
    return isinstance(act, RPReLU) and bool((act.prelu.weight >= 0).all())


def _fold_through_pools(model, graph, replay=None):
    """frozen conv -> MaxPool2d(2) -> BatchNorm2d -> RPReLU (each the only user of the one before) becomes
    conv (BN folded, RPReLU fused) -> MaxPool2d where the BN and RPReLU are non-decreasing per channel: a
    non-decreasing function commutes with max exactly, so only the folded BN's rounding changes. Returns
    folded convs' targets (their layers now expect the rewritten graph). replay: as in _fuse_graph."""
    folds = []
    for node in list(graph.nodes):
        conv = _module(model, node, FrozenBinaryConv2d)
        pool_node = _single_user(node) if conv is not None else None
        if conv is None or (node.target not in replay if replay is not None else conv.act is not None or conv.folded_bn):
            continue
        if pool_node is None or not _is_pool2x2(_module(model, pool_node, torch.nn.MaxPool2d)):
            continue
        bn_node = _single_user(pool_node)
        bn = _module(model, bn_node, torch.nn.BatchNorm2d)
        act_node = _single_user(bn_node) if bn is not None else None
        act = _module(model, act_node, RPReLU)
        if bn is None or act is None:
            continue
        if replay is None:
            if not _monotone_bn(bn) or not _monotone_rprelu(act):
                continue
            conv.fold_affine(*_bn_affine(bn))
            conv.fuse_rprelu(act)
        act_node.replace_all_uses_with(pool_node)
        graph.erase_node(act_node)
        graph.erase_node(bn_node)
        folds.append(node.target)
    return folds


def _bitpool2x2(bits):
    """MaxPool2d(2) on packed signs [N, H, W, Cw]: sign(max of 4 - mu) is +1 iff one of them is >= mu."""
    h, w = bits.shape[1] // 2 * 2, bits.shape[2] // 2 * 2
    b = bits[:, :h, :w]
    return (b[:, 0::2, 0::2] | b[:, 0::2, 1::2]) | (b[:, 1::2, 0::2] | b[:, 1::2, 1::2])



def _chain_graph(model, graph, replay=None):
    """Gives each frozen conv whose input comes straight from another frozen conv (or through a 2x2
    max-pool) that producer's packed output: producer -> (out, bits) with next_shift = the consumer's
    mu; the consumer takes x_bits (and no float x). A producer whose floats nobody else reads drops them
    (float_out=False). Returns the chained consumers' targets. replay: as in _fuse_graph."""
    calls = _call_counts(graph)
    chained = []
    for q_node in list(graph.nodes):
        q = _module(model, q_node, FrozenBinaryConv2d)
        if q is None or calls[q_node.target] != 1 or not q_node.args or "x_bits" in q_node.kwargs:
            continue
        if replay is not None and q_node.target not in replay:
            continue
        src, pool = q_node.args[0], None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and _is_pool2x2(_module(model, src, torch.nn.MaxPool2d))):
            pool, src = src, src.args[0] if len(src.args) == 1 and not src.kwargs else None
        p = _module(model, src, FrozenBinaryConv2d) if isinstance(src, torch.fx.Node) else None
        if p is None or (replay is None and p.next_shift is not None) or calls[src.target] != 1:
            continue
        if replay is None:
            p.register_buffer("next_shift", q.x_shift.detach().clone())
        with graph.inserting_after(src):
            bits = graph.call_function(operator.getitem, (src, 1))
        with graph.inserting_after(src):
            out = graph.call_function(operator.getitem, (src, 0))
        src.replace_all_uses_with(out, delete_user_cb=lambda user: user not in (out, bits))
        if pool is not None:
            with graph.inserting_before(q_node):
                bits = graph.call_function(_bitpool2x2, (bits,))
        q_node.args = (None,) + tuple(q_node.args[1:])
        q_node.kwargs = {**q_node.kwargs, "x_bits": bits}
        if pool is not None and not pool.users:
            graph.erase_node(pool)
        if not out.users:
            graph.erase_node(out)
            if replay is None:
                p.float_out = False
        chained.append(q_node.target)
    return chained


def _trace_forward(tracer, module, fn=None):
    """tracer.trace of `module` running fn(module, ...) (default: the forward it runs now): torch.fx traces
    the class's, which a generated forward (an instance attribute) overrides; a subclass carrying fn stands
    in meanwhile."""
    if fn is None:
        own = module.__dict__.get("forward")
        fn = own.function if isinstance(own, FrozenForward) else None
    if fn is None or fn is type(module).forward:
        return tracer.trace(module)
    cls = module.__class__
    module.__class__ = type(cls.__name__, (cls,), {"forward": fn})
    try:
        return tracer.trace(module)
    finally:
        module.__class__ = cls


def _drop_identities(model, graph):
    for node in list(graph.nodes):  # an Identity (a folded BatchNorm, "no shortcut") is a call for nothing
        if (_module(model, node, torch.nn.Identity) is not None and len(node.args) == 1 and not node.kwargs
                and isinstance(node.args[0], torch.fx.Node)):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


def _chain(model):
    """deploy.freeze's chaining over the whole model's graph; the model gets the generated forward (same
    submodules and state). A model that cannot be traced keeps its forward, unchained."""
    # A forward taking more than the input could branch on the other arguments: tracing would keep the
    # defaults' branch only.
    own = model.__dict__.get("forward")
    fn = own.function if isinstance(own, FrozenForward) else type(model).forward
    if len(inspect.signature(fn).parameters) != 2:  # self and the input
        return 0
    try:
        graph = _trace_forward(_ChainTracer(), model)
    except Exception:
        return 0
    if any(n.op == "get_attr" and not _has_attr(model, n.target) for n in graph.nodes):
        return 0
    _drop_identities(model, graph)
    folded = _fold_through_pools(model, graph)
    chained = _chain_graph(model, graph)
    if not (folded or chained):
        return 0  # the model keeps its own forward
    _install(model, ("chain", tuple(folded), tuple(chained)), _compile(model, graph))
    return len(chained)


def _compile(module, graph):
    """The forward function (taking the module as self) generated from a rewritten graph of `module`."""
    graph.lint()
    return type(torch.fx.GraphModule(module, graph)).forward


def _install(module, stage, fn):
    """module's forward becomes fn; the rewrite (stage) is appended to what it keeps to regenerate fn."""
    own = module.__dict__.get("forward")
    stages = (own.stages if isinstance(own, FrozenForward) else ()) + (stage,)
    module.forward = FrozenForward(module, stages, fn)


def _replay(module, stages):
    """Regenerates a frozen module's forward: each stage's graph rewrite, replayed on the graph traced
    from the forward before it (the class's first). The layers already hold the state the rewrites set
    (RPReLU, folded BatchNorms, next_shift), so only the graph changes; a stage that no longer matches
    (the class's forward changed since the model was saved) is an error, not a silently different model."""
    fn = type(module).forward
    for stage in stages:
        kind = stage[0]
        if kind == "fuse":
            graph = _trace_forward(_OneLevelTracer(), module, fn)
            done = [tuple(_fuse_graph(module, graph, replay=set(stage[1])))]
        elif kind == "chain":
            graph = _trace_forward(_ChainTracer(), module, fn)
            _drop_identities(module, graph)
            done = [tuple(_fold_through_pools(module, graph, replay=set(stage[1]))),
                    tuple(_chain_graph(module, graph, replay=set(stage[2])))]
        else:
            raise ValueError(f"deploy: unknown frozen-forward stage {kind!r} (saved by a newer erbnn_ext?)")
        if sorted(sum(done, ())) != sorted(sum((tuple(t) for t in stage[1:]), ())):
            raise RuntimeError(
                f"deploy: cannot regenerate the frozen forward of {type(module).__qualname__}: its forward no "
                f"longer has the layer pattern the model was frozen with ({kind}: {stage[1:]}); load it with "
                f"the code it was saved with, or save the unfrozen model's state_dict and freeze again")
        fn = _compile(module, graph)
    return fn


class FrozenForward:
    """The forward deploy.freeze generates for a module (its torch.fx graph rewritten: tail fusion,
    chaining), installed as that module's `forward` attribute. It keeps the rewrites as plain data
    (`stages`: which layers were fused or chained), not code, so a frozen model pickles and loads (pickle,
    torch.save / torch.load, also weights_only=True with safe_globals()): after a load the function is
    regenerated from the module's class forward on the first call (or by deploy.materialize)."""

    def __init__(self, module, stages, function=None):
        self.module, self.stages, self._fn = module, tuple(stages), function

    @property
    def function(self):
        """The generated forward, a plain function of (module, *inputs)."""
        if self._fn is None:
            materialize(self.module)
        return self._fn

    # Read like a bound method's by torch.export (the code object names its trace) and inspect.
    @property
    def __func__(self):
        return self.function

    @property
    def __self__(self):
        return self.module

    @property
    def __code__(self):
        return self.function.__code__

    @property
    def __signature__(self):
        # As a bound method's: what torch.export / inspect match the inputs against.
        params = list(inspect.signature(self.function).parameters.values())[1:]
        return inspect.Signature(params)

    def __call__(self, *args, **kwargs):
        fn = self._fn if self._fn is not None else self.function
        return fn(self.module, *args, **kwargs)

    def __getstate__(self):
        return {"module": self.module, "stages": self.stages}

    def __setstate__(self, state):
        self.module, self.stages, self._fn = state["module"], tuple(state["stages"]), None

    def __deepcopy__(self, memo):
        # The function takes the module as an argument: a copy shares it (no re-trace).
        return FrozenForward(copy.deepcopy(self.module, memo), self.stages, self._fn)

    def __repr__(self):
        return f"FrozenForward({type(self.module).__name__}, stages={self.stages})"


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """Regenerates the frozen forwards of a loaded (unpickled) frozen model now rather than on its first
    call (e.g. before torch.compile or torch.export); submodules first, as the model's trace runs through
    theirs. Returns the model."""
    for m in reversed(list(model.modules())):
        own = m.__dict__.get("forward")
        if isinstance(own, FrozenForward) and own._fn is None:
            own._fn = _replay(m, own.stages)
    return model
