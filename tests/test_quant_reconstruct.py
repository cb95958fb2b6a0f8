"""Block reconstruction: blocks cut from the traced graph, learned rounding, and the fitted student.

The backbones are real (random init at their own input sizes, for the cuts); the fit runs on a small
residual network of torch layers at 32x32, so that many steps take seconds.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import quant
from backbones import get_model
from backbones.layers import Add
from distill.reconstruction import PROGRESS_FILE, reconstruct_resumably, save_progress
from quant.adaround import AdaRoundWeight
from quant.blocks import BlockError, find_blocks
from quant.reconstruct import ReconstructionSettings, quantizers_bypassed, reconstruct

pytestmark = pytest.mark.usefixtures("one_thread")


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(width)
        self.conv2, self.bn2, self.add = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), Add()

    def forward(self, x):
        return self.add(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))), x)


class TinyNet(nn.Module):
    """Stem, three residual blocks, a strided conv and a linear embedding: what face backbones are made of."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[_Residual(width) for _ in range(3)])
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width * 16 * 16, 32)

    def forward(self, x):
        return self.fc(torch.flatten(self.down(self.blocks(self.stem(x))), 1))


def _images(seed: int, count: int) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def float_model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.train()(_images(1, 64))  # BatchNorm statistics of the inputs
    return model.eval()


def _student(model: nn.Module, bits: int = 4) -> nn.Module:
    qcfg = quant.QuantConfig(weight_bits=bits, act_bits=bits, bn_mode="fold")
    return quant.post_training_quantize(model, qcfg, [_images(2, 32), _images(3, 32)], 2).student.eval()


def _error(student: nn.Module, model: nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float((student(images) - model(images)).pow(2).mean())


@pytest.mark.parametrize("name", ["r18", "mbf", "vargfacenet", "dlib_resnet"])
def test_blocks_of_every_backbone_compose_to_the_student_and_never_split_a_residual_sum(name):
    torch.manual_seed(0)
    model = get_model(name, num_features=32).eval()
    student = quant.quantize_model(model, quant.QuantConfig(bn_mode="frozen")).eval()
    size = model.input_spec.size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = student(images)
        blocks = find_blocks(student)
        out = images
        for block in blocks:
            out = block.module(out)
    assert torch.equal(out, expected)
    adds = [n for n, m in student.named_modules() if isinstance(m, Add)]
    in_blocks = [n for b in blocks for n, _ in b.module.named_modules() if n in adds]
    assert sorted(in_blocks) == sorted(adds)  # every sum lies inside exactly one block, with both its inputs
    layers = [layer for b in blocks for layer in b.layers]
    assert len(layers) == len(set(layers)) == sum(isinstance(m, quant.layers.QuantWeighted)
                                                  for m in student.modules())
    assert all(len(b.layers) >= 2 for b in blocks[:-1])


def test_min_layers_sets_how_many_layers_a_chain_block_holds(float_model):
    student = _student(float_model)
    sizes = {k: [len(b.layers) for b in find_blocks(student, k)] for k in (1, 2, 4)}
    assert sizes[1] == [1, 2, 2, 2, 1, 1]  # stem, 3 residual blocks (never split), strided conv, fc
    assert sizes[2] == [3, 2, 2, 2]       # the stem joins the first residual block; conv + fc together
    assert sizes[4] == [5, 4]            # the last block takes what is left


def test_an_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    student = quant.quantize_model(Branchy(), quant.QuantConfig())
    with pytest.raises(BlockError, match="torch.fx cannot trace Branchy.*reconstruct_iters=0"):
        find_blocks(student)


def test_bypassed_quantizers_give_the_float_function_and_come_back(float_model):
    student = _student(float_model)
    images = _images(4, 8)
    with torch.no_grad():
        quantized = student(images)
        with quantizers_bypassed(student):
            assert torch.allclose(student(images), float_model(images), atol=1e-4)
        assert torch.equal(student(images), quantized)


def test_learned_rounding_starts_at_the_weights_and_ends_on_the_quantizers_grid(float_model):
    student = _student(float_model)
    layer = student.blocks[0].conv1
    quantizer = layer.weight_quant
    scale = quantizer.scale.clone()
    rounding = AdaRoundWeight(quantizer, layer.weight)
    free = ~rounding.fixed  # a channel's extreme weights keep their nearest rounding: they set the grid
    assert 0 < int(rounding.fixed.sum()) <= 2 * layer.weight.shape[0]
    assert torch.allclose(rounding(layer.weight)[free], layer.weight[free], atol=1e-5)  # soft = the float weights
    with torch.no_grad():
        rounding.logit.add_(torch.randn_like(rounding.logit) * 5)  # any decisions at all
        hard = rounding.hard_weight()
        grid = (hard / scale.reshape(-1, 1, 1, 1)).round()
        assert (grid - (layer.weight / scale.reshape(-1, 1, 1, 1))).abs().max() < 1.0  # one step at most
        layer.weight.copy_(hard)
    assert torch.equal(quantizer(layer.weight), hard)  # on the grid, and the min/max grid did not move
    assert torch.equal(quantizer.scale, scale)


def test_reconstruction_lowers_each_block_error_and_the_held_out_error(float_model):
    student = _student(float_model)
    before = _error(student, float_model, _images(9, 64))
    settings = ReconstructionSettings(reconstruct_iters=200, reconstruct_batch_size=16, reconstruct_min_layers=1, seed=0)
    report = reconstruct(student, _images(5, 128), settings)
    assert [r["block"] for r in report] == ["stem.2", "blocks.0.add", "blocks.1.add", "blocks.2.add", "flatten", "fc"]
    assert sum(r["error_after"] < r["error_before"] for r in report) >= 5, report
    after = _error(student, float_model, _images(9, 64))
    assert after < 0.8 * before, (before, after)
    for module in student.modules():  # every rounding decided: each weight is where its quantizer puts it
        if isinstance(module, quant.layers.QuantWeighted):
            assert torch.equal(module.weight_quant(module.weight), module.weight)
    for name, q in quant.quantizers(student):  # nothing of the fit is left switched on
        assert q.drop_prob == 0.0 and q.scale.requires_grad == q.learnable, name


def test_a_reconstruction_stopped_after_a_block_goes_on_to_the_same_student(float_model, tmp_path):
    settings = ReconstructionSettings(reconstruct_iters=20, reconstruct_batch_size=16, reconstruct_min_layers=1, seed=3)
    images = _images(5, 64)
    whole = _student(float_model)
    (tmp_path / "whole").mkdir()
    reconstruct_resumably(tmp_path / "whole", whole, settings, lambda: images)

    class Stop(Exception):
        pass

    stopped, path = _student(float_model), tmp_path / PROGRESS_FILE

    def stop_after_two(done: int, total: int, report: list[dict]) -> None:
        save_progress(path, settings, stopped, done, total, report)
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        reconstruct(stopped, images, settings, on_block=stop_after_two)
    resumed = _student(float_model)
    reconstruct_resumably(tmp_path, resumed, settings, lambda: images)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    again = _student(float_model)  # a finished reconstruction is read back, not redone
    reconstruct_resumably(tmp_path, again, settings, lambda: pytest.fail("the images were asked for again"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in whole.state_dict().items())
