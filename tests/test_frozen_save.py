"""A frozen model saved whole and loaded again (pickle, torch.save / torch.load with and without
weights_only, then erbnn_ext.export) computes exactly what it did before: freeze's generated forwards are
kept as the rewrites that made them and regenerated on load (deploy.FrozenForward)."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from erbnn_ext import deploy, export, models


def _trained(name):
    torch.manual_seed(0)
    model = getattr(models, name)(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    return model.eval()


def _torch_roundtrip(model, weights_only):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    if not weights_only:
        return torch.load(buf, weights_only=False)
    with torch.serialization.safe_globals(deploy.safe_globals()):
        return torch.load(buf, weights_only=True)


ROUTES = {"pickle": lambda m: pickle.loads(pickle.dumps(m)),
          "torch_save": lambda m: _torch_roundtrip(m, False),
          "torch_save_weights_only": lambda m: _torch_roundtrip(m, True)}

# default freeze (tail fusion + chaining), tail fusion only, and VGG-Small's fold through max-pools
CASES = [("resnet20_1w1a", {}), ("resnet20_1w1a", {"chain": False}), ("vgg_small_1w1a", {})]


@pytest.fixture(scope="module", params=CASES, ids=["resnet20", "resnet20_nochain", "vgg_small"])
def frozen_case(request):
    name, kw = request.param
    frozen = deploy.freeze(_trained(name), **kw)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        return frozen, x, frozen(x)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_frozen_model_roundtrips(native, frozen_case, route):
    frozen, x, y = frozen_case
    loaded = ROUTES[route](frozen)
    assert type(loaded) is type(frozen)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
        assert torch.equal(loaded(x[:1]), frozen(x[:1]))
    # the loaded model saves again, and copies
    with torch.no_grad():
        assert torch.equal(ROUTES[route](loaded)(x), y)
        assert torch.equal(copy.deepcopy(loaded)(x), y)


def test_loaded_frozen_model_exports(native, frozen_case):
    frozen, x, y = frozen_case
    loaded = pickle.loads(pickle.dumps(frozen))  # not called before the export: export regenerates first
    ep = export.export(loaded, x)
    with torch.no_grad():
        assert torch.equal(ep.module()(x), y)
    assert export.custom_ops(ep) == export.custom_ops(export.export(frozen, x))


def test_stages_are_plain_data(native, frozen_case):
    frozen, _, _ = frozen_case
    own = [m.__dict__["forward"] for m in frozen.modules() if "forward" in m.__dict__]
    assert own and all(isinstance(f, deploy.FrozenForward) for f in own)
    for f in own:
        flat = [f.stages]
        while flat:
            v = flat.pop()
            assert isinstance(v, (tuple, str)), v
            if isinstance(v, tuple):
                flat.extend(v)


def test_mismatched_class_forward_is_an_error(native):
    frozen = deploy.freeze(_trained("resnet20_1w1a"), chain=False)
    loaded = pickle.loads(pickle.dumps(frozen))
    block = loaded.layer1[0]
    fwd = block.__dict__["forward"]
    # as if the block's class forward had changed since the model was saved: the saved fusion no longer matches
    fwd.stages = (("fuse", ("conv1", "conv2", "no_such_conv")),)
    with pytest.raises(RuntimeError, match="cannot regenerate the frozen forward of BasicBlock"):
        with torch.no_grad():
            loaded(torch.randn(1, 3, 32, 32))
