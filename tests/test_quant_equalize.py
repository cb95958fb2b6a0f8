"""Channel equalisation keeps the function and evens out per-channel activation ranges."""
from __future__ import annotations

import copy

import torch
from torch import nn

import quant
from backbones import get_model
from quant.equalize import equalize, find_chains


class Chain(nn.Module):
    """conv -> PReLU -> pad -> depthwise -> PReLU -> 1x1 conv -> flatten -> linear, with lopsided channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=True)
        self.act1 = nn.PReLU(8)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=True)
        self.act2 = nn.PReLU(8)
        self.pw = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        with torch.no_grad():  # channel 0 a hundred times larger than the rest, as after BN folding
            self.conv.weight[0] *= 100
            self.conv.bias[0] *= 100
            self.dw.weight[3] *= 50

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.act2(self.dw(self.pad(self.act1(self.conv(x))))))
        return self.fc(torch.flatten(x, 1))


def _consumer_input_ranges(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = {}

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen["r"] = inputs[0].abs().amax(dim=(0, 2, 3))

    handle = model.get_submodule(name).register_forward_pre_hook(record)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["r"]


def test_chains_found_through_prelu_and_padding_but_not_across_flatten() -> None:
    torch.manual_seed(0)
    assert find_chains(Chain()) == [("conv", ["act1", "pad"], "dw"), ("dw", ["act2"], "pw")]


def test_equalize_keeps_outputs_and_evens_depthwise_input_ranges() -> None:
    torch.manual_seed(0)
    model, x = Chain().eval(), torch.randn(16, 3, 9, 9)
    before = _consumer_input_ranges(model, "dw", x)
    assert before.max() / before.min() > 20
    reference = model(x)
    eq = copy.deepcopy(model)
    assert equalize(eq, [x]) == ["dw", "pw"]
    torch.testing.assert_close(eq(x), reference, rtol=1e-4, atol=1e-4)
    after = _consumer_input_ranges(eq, "dw", x)
    torch.testing.assert_close(after, torch.full_like(after, float(after.max())), rtol=1e-4, atol=1e-6)
    # the per-tensor 8-bit student of the equalised model is closer to the float model
    errors = []
    for float_model in (model, eq):
        student = quant.quantize_model(float_model, quant.QuantConfig(weight_bits=8, act_bits=8))
        quant.calibrate(student, [x])
        errors.append((student.eval()(x) - reference).pow(2).mean().item())
    assert errors[1] < errors[0] / 4


def test_equalize_batchnorm_producers_in_iresnet() -> None:
    torch.manual_seed(0)
    model = get_model("r18", num_features=32).eval()
    for m in model.modules():  # arcface_torch's init blows up activations; make them sane for the check
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    chains = find_chains(model)
    assert ("layer1.0.bn2", ["layer1.0.prelu"], "layer1.0.conv2") in chains
    x = torch.randn(2, 3, 112, 112)
    reference = model(x)
    equalize(model, [x])
    torch.testing.assert_close(model(x), reference, rtol=1e-3, atol=1e-3)
