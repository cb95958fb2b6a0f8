"""Placement, key names, mixed precision, BN modes, observers and size report of quantized students."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import get_model
from quant import (FakeQuantizer, FrozenBatchNorm2d, QuantConfig, QuantConfigError, QuantizeError, calibrate,
                   freeze_observers, quantize_model, quantizers, set_observers, size_report)
from quant.bn import fold_batchnorms
from quant.graph import trace
from utils.config import load_config
from backbones.layers import Add, Mul

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """Every pattern quant/ must handle: conv->BN, pre-activation BN, downsample, Add, Mul gate, Linear->BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)
        self.pre_bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.add = Add()
        self.gate = nn.Conv2d(16, 16, 1)
        self.mul = Mul()
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.features = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.add(self.bn2(self.conv2(self.pre_bn(x))), self.down(x))
        x = self.mul(x, torch.sigmoid(self.gate(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


def tiny(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def placement(model: nn.Module) -> set[str]:
    return {name for name, _ in quantizers(model)}


def meta_model(name: str) -> nn.Module:
    """Full-size backbone without allocating or initialising weights (for counting only)."""
    with torch.device("meta"):
        return get_model(name)


@pytest.fixture(scope="module")
def r100() -> nn.Module:
    return get_model("r100")  # on CPU: cheaper to build than on "meta" for this size


def test_quantface_placement_on_r100_counts_every_listed_quantizer(r100: nn.Module) -> None:
    float_model = r100
    student = quantize_model(float_model, QuantConfig(quant_mode="quantface"))
    convs = [n for n, m in float_model.named_modules() if type(m) is nn.Conv2d]
    prelus = [n for n, m in float_model.named_modules() if type(m) is nn.PReLU]
    adds = [n for n, m in float_model.named_modules() if type(m) is Add]
    assert (len(convs), len(prelus), len(adds)) == (103, 50, 49)
    expected = ({f"{n}.weight_quant" for n in convs + ["fc"] + prelus}
                | {f"{n}.output_quant" for n in prelus + adds})
    assert placement(student) == expected
    for name in convs + ["fc"]:
        q = student.get_submodule(f"{name}.weight_quant")
        assert q.per_channel and not q.symmetric and q.scale.shape[0] == student.get_submodule(name).weight.shape[0]
    for name in prelus:  # slope per tensor at the activation bit width
        q = student.get_submodule(f"{name}.weight_quant")
        assert not q.per_channel and q.num_bits == 8
    assert all(type(m) is nn.BatchNorm2d for n, m in student.named_modules() if "bn" in n and n.count(".") < 3)


def test_deploy_placement_quantizes_each_kernel_input_once() -> None:
    student = quantize_model(tiny(), QuantConfig())
    assert placement(student) == {
        "conv1.input_quant", "conv1.weight_quant",          # image input
        "conv2.input_quant", "conv2.weight_quant",          # reads pre_bn (float)
        "down.0.input_quant", "down.0.weight_quant",        # reads the PReLU output (float)
        "add.input0_quant", "add.input1_quant", "add.output_quant",
        "gate.weight_quant",                                # reads the quantized Add output
        "mul.input1_quant", "mul.output_quant",             # input0 is the quantized Add output
        "fc.weight_quant",                                  # reads flatten(quantized Mul output)
    }
    assert student.conv1.weight_quant.symmetric and int(student.conv1.weight_quant.qmin) == -127
    assert not student.add.output_quant.symmetric and int(student.add.output_quant.qmax) == 255


def test_deploy_placement_leaves_narrow_grouped_convs_a_float_input() -> None:
    """A grouped conv with 2 channels per group (onnxruntime's integer kernel is slower than float for it) gets
    no input quantizer, its weights stay quantized; depthwise and wide-group convs keep their input quantizer."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                          nn.PReLU(8), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.PReLU(8),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2))
    assert placement(quantize_model(model, QuantConfig())) == {
        "0.input_quant", "0.weight_quant", "2.weight_quant", "4.input_quant", "4.weight_quant",
        "6.input_quant", "6.weight_quant"}


class ReluNet(nn.Module):
    """The ReLU patterns of dlib's ResNet: conv -> ReLU, max pool and zero padding, a sum read by a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.pad = nn.Conv2d(8, 8, 3, 1, 0), nn.ZeroPad2d((1, 1, 1, 1))
        self.add, self.relu2 = Add(), nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.add(self.pad(self.conv2(x)), x))
        return self.fc(torch.flatten(x, 1))


def test_deploy_placement_quantizes_relu_outputs_with_zero_point_zero() -> None:
    student = quantize_model(ReluNet().eval(), QuantConfig(act_observer="lsq"))
    assert placement(student) == {
        "conv1.input_quant", "conv1.weight_quant",
        "relu1.output_quant",                               # unsigned, zero point 0: int8 kernels fold the ReLU
        "conv2.weight_quant",                               # reads max_pool(relu1): still on relu1's grid
        "add.input0_quant",                                 # pad(conv2): the int8 conv's output, then an int8 pad
        "relu2.output_quant",                               # the sum has no quantizer of its own: relu2's is it
        "fc.weight_quant",                                  # reads flatten(relu2): on relu2's grid
    }
    q = student.relu1.output_quant
    assert q.nonnegative and not isinstance(q.zero_point, nn.Parameter) and int(q.qmin) == 0
    calibrate(student, [torch.randn(4, 3, 8, 8)])
    assert q.zero_point.item() == 0 and student.relu2.output_quant.zero_point.item() == 0
    assert student.conv2.bias_input[0] is q  # the int32 bias grid of conv2 uses relu1's scale
    float_model = quantize_model(ReluNet().eval(), QuantConfig(quant_mode="quantface"))
    assert not any("relu" in name for name in placement(float_model))  # the paper's placement leaves ReLU float


def test_deploy_placement_on_r100(r100: nn.Module) -> None:
    student = quantize_model(r100, QuantConfig())
    names = placement(student)
    convs = [n for n, m in student.named_modules() if isinstance(m, nn.Conv2d)]
    # every conv reads a quantized tensor: its own input quantizer, or a quantized residual sum
    # (the downsample convs of layer2..4 read the previous block's Add output directly)
    skipped = sorted(n for n in convs if f"{n}.input_quant" not in names)
    assert skipped == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    adds = [n for n, m in student.named_modules() if isinstance(m, Add)]
    assert all(f"{n}.output_quant" in names and f"{n}.input0_quant" in names for n in adds)
    assert sorted(n for n in adds if f"{n}.input1_quant" in names) == [f"layer{i}.0.add" for i in range(1, 5)]
    assert not any(n.startswith("prelu") or ".prelu." in n for n in names)


def test_deploy_placement_with_prelu_inputs_quantized(r100: nn.Module) -> None:
    plain, prelu_in = placement(quantize_model(r100, QuantConfig())), placement(
        quantize_model(r100, QuantConfig(quantize_prelu_input=True)))
    prelus = [n for n, m in r100.named_modules() if isinstance(m, nn.PReLU)]
    # each PReLU input gets a quantizer (so the conv + BN before it runs as an integer kernel); nothing else moves
    assert prelu_in - plain == {f"{n}.input_quant" for n in prelus} and plain <= prelu_in
    assert len(prelus) == 1 + 49  # the stem and one per block (3 + 13 + 30 + 3)
    with pytest.raises(QuantConfigError, match="quantize_prelu_input=True is a quant_mode='deploy' placement"):
        QuantConfig(quant_mode="quantface", quantize_prelu_input=True)
    assert QuantConfig.from_config(load_config(None, ["quantize_prelu_input=true"])).quantize_prelu_input is True


def test_float_conv_inputs_leaves_float_exactly_the_inputs_of_convs_a_prelu_reads(r100: nn.Module) -> None:
    plain, fci = placement(quantize_model(r100, QuantConfig())), placement(
        quantize_model(r100, QuantConfig(float_conv_inputs=True)))
    # the stem conv (-> bn1 -> prelu) and each block's conv1 (-> bn2 -> prelu); conv2, downsamples, fc keep theirs
    blocks = [n.removesuffix(".conv1") for n, m in r100.named_modules() if n.endswith(".conv1")]
    assert len(blocks) == 49 and plain - fci == {"conv1.input_quant", *(f"{b}.conv1.input_quant" for b in blocks)}
    assert fci < plain and QuantConfig(float_conv_inputs=True).describe() == "W8A8+fci"
    for wrong in ({"quant_mode": "quantface"}, {"quantize_prelu_input": True}):
        with pytest.raises(QuantConfigError, match="float_conv_inputs=True applies to quant_mode='deploy' with "):
            QuantConfig(float_conv_inputs=True, **wrong)
    assert QuantConfig.from_config(load_config(None, ["float_conv_inputs=true"])).float_conv_inputs is True


def test_state_dict_keeps_float_keys_and_float_model_is_untouched() -> None:
    float_model = tiny()
    before = {k: v.clone() for k, v in float_model.state_dict().items()}
    student = quantize_model(float_model, QuantConfig(quant_mode="quantface"))
    assert all(type(m) in (TinyNet, nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU, nn.Sequential, Add,
                           Mul, nn.Linear) for m in float_model.modules())
    assert all(torch.equal(before[k], v) for k, v in float_model.state_dict().items())
    float_keys, student_keys = set(before), set(student.state_dict())
    assert float_keys < student_keys
    assert all("_quant." in k for k in student_keys - float_keys)
    assert "conv1.weight_quant.scale" in student_keys and "add.output_quant.zero_point" in student_keys
    # arcface_torch-style float weights load 1:1 into the student
    fresh = quantize_model(tiny(seed=1), QuantConfig(quant_mode="quantface"))
    result = fresh.load_state_dict(float_model.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all("_quant." in k for k in result.missing_keys)
    assert torch.equal(fresh.conv2.weight, float_model.conv2.weight)


def test_mixed_precision_from_layer_bits() -> None:
    qcfg = QuantConfig(weight_bits=4, act_bits=4, layer_bits={"conv1": [8, 8], "fc": [8, 6], "layer4.*": [32, 32]})
    student = quantize_model(meta_model("r18"), qcfg)
    bits = {name: q.num_bits for name, q in quantizers(student)}
    assert bits["conv1.weight_quant"] == bits["conv1.input_quant"] == 8
    assert (bits["fc.weight_quant"], bits["fc.input_quant"]) == (8, 6)
    assert bits["layer1.0.conv1.weight_quant"] == bits["layer1.0.conv1.input_quant"] == 4
    assert bits["layer3.1.add.output_quant"] == 4
    assert not any(name.startswith("layer4.") for name in bits)
    assert any(name.startswith("layer3.") for name in bits)


def test_layer_bits_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(QuantizeError, match=r"'layer9\.\*' matches no quantizable module.*conv1"):
        quantize_model(tiny(), QuantConfig(layer_bits={"layer9.*": [8, 8]}))


def test_config_from_project_config_and_validation() -> None:
    cfg = load_config(None, ["weight_bits=4", "act_bits=6", "quant_mode=quantface", "layer_bits={'fc': [8, 8]}",
                             "act_observer=ema", "bn_mode=frozen"])
    qcfg = QuantConfig.from_config(cfg)
    assert (qcfg.weight_bits, qcfg.act_bits, qcfg.quant_mode, qcfg.act_observer, qcfg.bn_mode) == (4, 6, "quantface",
                                                                                              "ema", "frozen")
    assert qcfg.layer_bits == {"fc": [8, 8]} and qcfg.weight_symmetric is False  # the paper's asymmetric weights
    assert QuantConfig.from_dict(qcfg.to_dict()) == qcfg
    assert QuantConfig().weight_symmetric is True
    with pytest.raises(QuantConfigError, match="weight_symmetric=True cannot apply with quant_mode='quantface'"):
        QuantConfig(quant_mode="quantface", weight_symmetric=True)
    with pytest.raises(QuantizeError, match="use quant.post_training_quantize"):
        quantize_model(get_model("mbf", num_features=32), QuantConfig(equalize=True))
    with pytest.raises(QuantConfigError, match="weight_bits=9 is out of range"):
        QuantConfig(weight_bits=9)
    with pytest.raises(QuantConfigError, match="did you mean 'minmax'"):
        QuantConfig(act_observer="minmx")
    with pytest.raises(QuantConfigError, match="lsq_init='percentil' is not valid; did you mean 'percentile'"):
        QuantConfig(lsq_init="percentil")
    with pytest.raises(QuantConfigError, match=r"layer_bits\['fc'\].*\[weight_bits, act_bits\]"):
        QuantConfig(layer_bits={"fc": [8]})
    with pytest.raises(QuantConfigError, match="did you mean 'act_bits'"):
        QuantConfig.from_dict({"act_bit": 8})


def test_frozen_bn_stays_frozen_in_train_mode_but_affine_params_train() -> None:
    student = quantize_model(tiny(), QuantConfig(bn_mode="frozen")).train()
    bns = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 5 and not any(bn.training for bn in bns)
    stats = [bn.running_mean.clone() for bn in bns]
    student(torch.randn(4, 3, 8, 8) * 3 + 1).sum().backward()
    assert all(torch.equal(s, bn.running_mean) for s, bn in zip(stats, bns))
    assert student.bn1.weight.grad is not None and student.conv1.weight.grad is not None
    trained = quantize_model(tiny(), QuantConfig(bn_mode="train")).train()
    trained(torch.randn(4, 3, 8, 8) * 3 + 1)
    assert not torch.equal(trained.bn1.running_mean, tiny().bn1.running_mean)


def test_fold_is_exact_where_allowed() -> None:
    float_model, folded_model = tiny(), tiny()
    folded, frozen = fold_batchnorms(folded_model, trace(folded_model))
    assert sorted(folded) == ["bn1", "bn2", "down.1", "features"] and frozen == ["pre_bn"]
    assert isinstance(folded_model.pre_bn, FrozenBatchNorm2d) and isinstance(folded_model.bn1, nn.Identity)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded_model(x), float_model(x), rtol=0, atol=1e-5)
    student = quantize_model(float_model, QuantConfig(bn_mode="fold"))
    assert "bn1.running_mean" not in student.state_dict() and "conv1.bias" in student.state_dict()


def test_fold_on_r18_keeps_pre_activation_bns_and_matches_unfolded() -> None:
    torch.manual_seed(0)
    float_model = get_model("r18", num_features=64).double().eval()
    with torch.no_grad():
        for m in float_model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(50.0, 100.0)  # keeps the random network's activations O(1)
    student = quantize_model(float_model, QuantConfig(bn_mode="fold", weight_bits=32, act_bits=32)).eval()
    kept = sorted(n for n, m in student.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert kept == ["bn2"] + [f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)]
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        expected = float_model(x)
        torch.testing.assert_close(student(x), expected, rtol=0, atol=1e-5)
    assert float(expected.abs().max()) > 1e-2


def test_calibrate_collects_ranges_then_freezes() -> None:
    student = quantize_model(tiny(), QuantConfig())
    batches = [torch.randn(2, 3, 8, 8), (torch.randn(2, 3, 8, 8) * 2, torch.zeros(2))]
    calibrate(student, batches)
    q = student.conv1.input_quant
    assert not q.observer_enabled and not student.training
    assert float(q.estimator.min_val) == min(float(batches[0].min()), float(batches[1][0].min()))
    assert float(q.estimator.max_val) == max(float(batches[0].max()), float(batches[1][0].max()))
    scale = q.scale.clone()
    student.train()(torch.randn(2, 3, 8, 8) * 10)
    assert torch.equal(q.scale, scale)
    with pytest.raises(ValueError, match="no batches"):
        calibrate(student, [])


def test_uncalibrated_frozen_student_raises_clear_error() -> None:
    student = set_observers(quantize_model(tiny(), QuantConfig()), False)
    with pytest.raises(RuntimeError, match="conv1.input_quant.*calibrate"):
        student(torch.randn(1, 3, 8, 8))


def test_quantface_fixed_range_training_recomputes_weight_ranges_every_step() -> None:
    student = quantize_model(tiny(), QuantConfig(quant_mode="quantface")).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for step in range(3):  # observer steps
        optimizer.zero_grad()
        student(torch.randn(4, 3, 8, 8)).square().mean().backward()
        optimizer.step()
    freeze_observers(student)
    act_scale = student.add.output_quant.scale.clone()
    weight_scale = student.conv2.weight_quant.scale.clone()
    optimizer.zero_grad()
    student(torch.randn(4, 3, 8, 8) * 5).square().mean().backward()
    optimizer.step()
    student(torch.randn(4, 3, 8, 8))
    assert torch.equal(student.add.output_quant.scale, act_scale)
    assert not torch.equal(student.conv2.weight_quant.scale, weight_scale)
    flat = student.conv2.weight.detach().reshape(16, -1)
    expected = (flat.max(1).values.clamp(min=0) - flat.min(1).values.clamp(max=0)) / 255
    torch.testing.assert_close(student.conv2.weight_quant.scale, expected)


def test_lsq_scales_learn_after_freezing() -> None:
    student = quantize_model(tiny(), QuantConfig(act_observer="lsq", weight_observer="lsq", weight_bits=4,
                                                 act_bits=4))
    calibrate(student, [torch.randn(4, 3, 8, 8)])
    scales = {n: q.scale.detach().clone() for n, q in quantizers(student)}
    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    student(torch.randn(4, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    changed = [n for n, q in quantizers(student) if not torch.equal(q.scale.detach(), scales[n])]
    assert "conv1.input_quant" in changed and "conv2.weight_quant" in changed


def test_size_report_counts_bits_per_parameter() -> None:
    student = quantize_model(tiny(), QuantConfig(weight_bits=4, layer_bits={"fc": [8, 8]}))
    report = size_report(student)
    layers = report["layers"]
    assert layers["conv1"] == {"type": "QuantConv2d", "params": 216, "weight_bits": 4, "mb": 216 * 4 / 8 / 1e6}
    assert layers["fc"]["mb"] == pytest.approx((2560 * 8 + 10 * 32) / 8 / 1e6)
    assert layers["prelu"]["weight_bits"] == 32 and layers["bn1"]["mb"] == pytest.approx(16 * 4 / 1e6)
    params = sum(p.numel() for n, p in student.named_parameters() if "_quant." not in n)
    assert report["params"] == params and report["fp32_mb"] == pytest.approx(params * 4 / 1e6)
    assert report["total_mb"] == pytest.approx(sum(layer["mb"] for layer in layers.values()))
    assert report["compression"] == pytest.approx(report["fp32_mb"] / report["total_mb"])
    r18 = size_report(quantize_model(meta_model("r18"), QuantConfig()))
    assert 3.9 < r18["compression"] < 4.0


def test_quantizing_twice_is_refused_and_models_without_layers_too() -> None:
    student = quantize_model(tiny(), QuantConfig())
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(student, QuantConfig())
    with pytest.raises(QuantizeError, match="no Conv2d"):
        quantize_model(nn.Sequential(nn.BatchNorm1d(3)), QuantConfig())
    assert isinstance(student.conv1.weight_quant, FakeQuantizer)


@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "lsq"])
def test_students_train_under_autocast(observer: str) -> None:
    student = quantize_model(tiny(), QuantConfig(act_observer=observer, weight_observer="lsq" if observer == "lsq"
                                                 else "minmax")).train()
    for observing in (True, False):
        set_observers(student, observing)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = student(torch.randn(4, 3, 8, 8))
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
    assert float(student.conv1.weight.grad.abs().sum()) > 0
    assert student.add.output_quant.estimator.min_val.dtype == torch.float32


def test_readers_of_one_tensor_share_one_input_quantizer() -> None:
    """arcface_torch's mbf: each stage's first residual block reads the previous projection's output twice
    (its expansion conv and its residual sum); both read it through one quantizer, so the exported graph has
    one QuantizeLinear there (tests/test_deploy.py checks what onnxruntime makes of it)."""
    model = get_model("mbf", num_features=64, blocks=[1, 1, 1, 1]).eval()
    shared, separate = quantize_model(model, QuantConfig()), quantize_model(
        model, QuantConfig(share_input_quantizers=False))
    for student, same in ((shared, True), (separate, False)):
        modules = dict(student.named_modules(remove_duplicate=False))
        for stage in (3, 5, 7):
            conv = modules[f"layers.{stage}.layers.0.layers.0.layers.0.input_quant"]
            assert isinstance(conv, FakeQuantizer) and (conv is modules[f"layers.{stage}.layers.0.add.input1_quant"]) \
                is same
    everywhere = [n for n, m in shared.named_modules(remove_duplicate=False) if isinstance(m, FakeQuantizer)]
    assert len(placement(shared)) == len(placement(separate)) - 3 == len(everywhere) - 3
    assert shared.state_dict().keys() == separate.state_dict().keys()  # each reader keeps its key path
    assert not quantize_model(model, QuantConfig(float_conv_inputs=True)).layers[3].layers[0].layers[0].layers[
        0].input_quant  # with float conv inputs the conv reads float: nothing to share
    assert QuantConfig.from_config(load_config(None, ["share_input_quantizers=false"])).share_input_quantizers is False
