"""distill.precision: under autocast the student's last Linear and the layers after it run in float32."""
from __future__ import annotations

import pytest
import torch

from torch import nn

from distill.precision import keep_tail_fp32
from quant import QuantConfig, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyFaceNet(nn.Module):
    """A backbone's shape in small: conv body, flatten, ``fc``, final BatchNorm ``features`` (as iresnet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.PReLU(8)
        self.fc = nn.Linear(8 * 8 * 8, 16)
        self.features = nn.BatchNorm1d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.act(self.conv1(x)), 1)))


def _dtypes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.dtype]:
    """Output dtype of the stem conv, the fc and the final BatchNorm, and of the model, under bf16 autocast."""
    seen: dict[str, torch.dtype] = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, a, out, name=name: seen.__setitem__(name, out.dtype)) for name in ("conv1", "fc", "features")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen["model"] = model(x).dtype
        seen["autocast_after"] = torch.is_autocast_enabled("cpu")
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("quantized", [False, True])
def test_last_linear_and_what_follows_run_in_fp32_under_autocast(quantized):
    torch.manual_seed(0)
    model = TinyFaceNet().eval()
    if quantized:
        model = quantize_model(model, QuantConfig(weight_bits=8, act_bits=8)).eval()
    x = torch.randn(2, 3, 16, 16)
    before = _dtypes(model, x)
    assert before["fc"] == torch.bfloat16  # what autocast alone does: the test can fail
    keys = list(model.state_dict())
    handles = keep_tail_fp32(model)
    after = _dtypes(model, x)
    assert after["conv1"] == torch.bfloat16  # the body keeps mixed precision
    assert after["fc"] == after["features"] == after["model"] == torch.float32
    assert after["autocast_after"]  # switched back on once the model's forward returns
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no autocast: the hooks change nothing
    for handle in handles:
        handle.remove()
    assert _dtypes(model, x)["fc"] == torch.bfloat16


def test_a_forward_that_fails_inside_the_tail_leaves_autocast_on():
    model = TinyFaceNet().eval()
    keep_tail_fp32(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            model.fc.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
            model(torch.randn(2, 3, 16, 16))
        assert torch.is_autocast_enabled("cpu")
