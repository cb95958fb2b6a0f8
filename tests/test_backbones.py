"""Backbones: parameter counts, output shapes, arcface_torch state_dict key contract, strict checkpoint loading."""
from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from backbones import available_models, get_model, input_spec
from backbones import load_float_model
from utils.checkpoint import CheckpointError
from backbones.layers import Add, Mul

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so a load that silently skipped a tensor would change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.2 + 0.9 if tensor.dim() == 1
                             else torch.randn(tensor.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name, millions", [
    ("r18", 24.03), ("r50", 43.59), ("r100", 65.16), ("mbf", 2.06), ("vargfacenet", 5.20),
    ("mbf_large", 6.31),
])
def test_parameter_counts_at_512d(name, millions):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = get_model(name, num_features=512)
    assert _params(model) / 1e6 == pytest.approx(millions, abs=0.005)


def test_r200_builds_with_its_parameter_count():
    with torch.device("meta"):
        model = get_model("r200")
    assert _params(model) / 1e6 == pytest.approx(118.83, abs=0.005)


def test_mbf_scale_1_is_the_narrow_pre_2021_variant():
    narrow = get_model("mbf", scale=1)
    assert _params(narrow) / 1e6 == pytest.approx(1.20, abs=0.005)
    assert narrow.state_dict()["layers.0.layers.0.weight"].shape == (64, 3, 3, 3)


@pytest.mark.parametrize("name", [n for n in available_models() if n not in ("r200", "onnx_graph")])  # onnx_graph: built from a file
def test_every_backbone_maps_its_declared_input_to_the_embedding(name):
    torch.manual_seed(0)
    model = get_model(name, num_features=128).eval()
    side = input_spec(name).size
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 128)


def test_dropout_keyword_is_accepted_where_it_applies():
    for name in ("r18", "vargfacenet"):
        model = get_model(name, dropout=0.4)
        assert any(isinstance(m, nn.Dropout) and m.p == 0.4 for m in model.modules())


def test_unknown_backbone_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'vargfacenet'"):
        get_model("vargfacenett")


# ---- arcface_torch key contract ----------------------------------------------------------------

def _bn(prefix: str) -> list[str]:
    return [prefix + k for k in BN_KEYS]


def _iresnet_keys(depths: tuple[int, ...]) -> set[str]:
    keys = ["conv1.weight", *_bn("bn1."), "prelu.weight", *_bn("bn2."), "fc.weight", "fc.bias", *_bn("features.")]
    for stage, blocks in enumerate(depths, start=1):
        keys += [f"layer{stage}.0.downsample.0.weight", *_bn(f"layer{stage}.0.downsample.1.")]
        for i in range(blocks):
            p = f"layer{stage}.{i}."
            keys += [*_bn(p + "bn1."), p + "conv1.weight", *_bn(p + "bn2."), p + "prelu.weight",
                     p + "conv2.weight", *_bn(p + "bn3.")]
    return set(keys)


def _conv_block(p: str) -> list[str]:
    return [p + "layers.0.weight", *_bn(p + "layers.1."), p + "layers.2.weight"]


def _linear_block(p: str) -> list[str]:
    return [p + "layers.0.weight", *_bn(p + "layers.1.")]


def _depthwise(p: str) -> list[str]:
    return _conv_block(p + "layers.0.") + _conv_block(p + "layers.1.") + _linear_block(p + "layers.2.")


def _residual(p: str, n: int) -> list[str]:
    return [k for j in range(n) for k in _depthwise(f"{p}layers.{j}.")]


def _mbf_keys(blocks: tuple[int, int, int, int]) -> set[str]:
    first = _conv_block("layers.1.") if blocks[0] == 1 else _residual("layers.1.", blocks[0])
    keys = (_conv_block("layers.0.") + first + _depthwise("layers.2.") + _residual("layers.3.", blocks[1])
            + _depthwise("layers.4.") + _residual("layers.5.", blocks[2]) + _depthwise("layers.6.")
            + _residual("layers.7.", blocks[3]) + _conv_block("conv_sep.")
            + _linear_block("features.layers.0.") + ["features.layers.2.weight"] + _bn("features.layers.3."))
    return set(keys)


@pytest.mark.parametrize("name, depths", [("r18", (2, 2, 2, 2)), ("r50", (3, 4, 14, 3))])
def test_iresnet_keys_are_exactly_arcface_torch(name, depths):
    state = get_model(name).state_dict()
    assert set(state) == _iresnet_keys(depths)
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)


@pytest.mark.parametrize("name, blocks", [("mbf", (1, 4, 6, 2)), ("mbf_large", (2, 8, 12, 4))])
def test_mbf_keys_are_exactly_arcface_torch(name, blocks):
    assert set(get_model(name).state_dict()) == _mbf_keys(blocks)


def test_mbf_shapes_follow_arcface_torch():
    state = get_model("mbf", num_features=256).state_dict()
    expected = {
        "layers.0.layers.0.weight": (128, 3, 3, 3),                  # 3 -> 64*scale, stride 2
        "layers.1.layers.0.weight": (128, 2, 3, 3),                  # depthwise-ish, groups=64
        "layers.2.layers.0.layers.0.weight": (128, 128, 1, 1),       # DepthWise expand to groups=128
        "layers.2.layers.1.layers.0.weight": (128, 1, 3, 3),         # depthwise 3x3
        "layers.4.layers.2.layers.0.weight": (256, 256, 1, 1),       # project 256 -> 128*scale
        "layers.5.layers.5.layers.1.layers.2.weight": (256,),        # PReLU of the 6th unit
        "layers.6.layers.0.layers.0.weight": (512, 256, 1, 1),       # expand to groups=512
        "conv_sep.layers.0.weight": (512, 256, 1, 1),
        "features.layers.0.layers.0.weight": (512, 1, 7, 7),         # GDC
        "features.layers.2.weight": (256, 512),                       # Linear, no bias
        "features.layers.3.running_mean": (256,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


# ---- residual sums are modules -----------------------------------------------------------------

class _OpsAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Add, Mul)) or super().is_leaf_module(m, qualname)


_ARITHMETIC = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.mul}


@pytest.mark.parametrize("name, adds, muls", [("r18", 8, 0), ("mbf", 12, 0), ("mbf_large", 26, 0),
                                              ("vargfacenet", 18, 12)])
def test_every_residual_sum_and_gate_is_an_ops_module(name, adds, muls):
    model = get_model(name)
    graph = _OpsAsLeaves().trace(model)
    raw = [n for n in graph.nodes if (n.op == "call_function" and n.target in _ARITHMETIC)
           or (n.op == "call_method" and n.target in ("add", "add_", "mul", "mul_"))]
    assert raw == []
    called = [type(model.get_submodule(n.target)) for n in graph.nodes if n.op == "call_module"]
    assert (called.count(Add), called.count(Mul)) == (adds, muls)


def test_vargfacenet_feature_map_sizes():
    model = get_model("vargfacenet").eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        x = model.head(model.prelu(model.bn1(model.conv1(x))))
        sizes = [tuple(x.shape[1:])]
        for stage in (model.stage2, model.stage3, model.stage4):
            x = stage(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(40, 56, 56), (80, 28, 28), (160, 14, 14), (320, 7, 7)]


# ---- checkpoints as arcface_torch writes them ------------------------------------------------------

@pytest.mark.parametrize("name, ddp", [("r18", False), ("mbf", False), ("mbf", True), ("vargfacenet", True)])
def test_bare_state_dict_round_trip_is_strict_and_exact(tmp_path, name, ddp):
    model = _randomize(get_model(name))
    state = model.state_dict()
    if ddp:
        state = {"module." + k: v for k, v in state.items()}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    loaded = load_float_model(path, network=name).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_narrow_mbf_loads_with_its_constructor_keywords(tmp_path):
    model = _randomize(get_model("mbf", num_features=128, scale=1))
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    loaded = load_float_model(path, network="mbf", num_features=128, scale=1).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="layers.0.layers.0.weight"):
        load_float_model(path, network="mbf", num_features=128)  # default scale=2 does not fit


def test_mismatched_state_dict_names_the_keys(tmp_path):
    state = get_model("mbf").state_dict()
    del state["features.layers.2.weight"]
    state["conv_sep.layers.0.weight"] = torch.zeros(512, 128, 1, 1)
    state["conv_sep.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_float_model(path, network="mbf")
    message = str(info.value)
    for needle in ("broken.pth", "missing keys: features.layers.2.weight", "unexpected keys: conv_sep.extra",
                   "conv_sep.layers.0.weight: checkpoint (512, 128, 1, 1) vs model (512, 256, 1, 1)"):
        assert needle in message


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "vargfacenet.pth"
    torch.save(get_model("vargfacenet").state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys: conv_sep"):
        load_float_model(path, network="mbf")
