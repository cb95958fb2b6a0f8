"""Training-face augmentation and generator options: what each does to pixels, keyed reproducibility, resume."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from assets import ensure_asset
from backbones.spec import InputSpec
from data import GeneratedFaces
from data.augment import Augmentation
from data.keyed_random import keyed_normals
from data.train_batches import TrainBatches

SIZE = 32


def disc(count: int, radius: float = 6.0) -> torch.Tensor:
    """uint8 [count, 3, SIZE, SIZE]: a white disc of ``radius`` pixels centred on a black face."""
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    inside = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 <= radius ** 2).to(torch.uint8) * 255
    return inside.expand(count, 3, SIZE, SIZE).clone()


def checkerboard(count: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    board = (((yy // 2 + xx // 2) % 2) * 200 + 28).to(torch.uint8)
    return board.expand(count, 3, SIZE, SIZE).clone()


def test_the_default_does_nothing_and_bad_values_name_their_field():
    images = checkerboard(3)
    assert not Augmentation().active and Augmentation()(images, 0, 0, [0, 1, 2]) is images
    for field, value, interval in (("crop", 0.0, "(0, 1]"), ("rotate", 90.0, "[0, 45]"), ("color", 1.0, "[0, 1)"),
                                   ("blur", -0.1, "[0, 1]"), ("mixup", 0.6, "[0, 0.5]")):
        with pytest.raises(ValueError, match=re.escape(f"augment_{field}={value} must be in {interval}")):
            Augmentation(**{field: value})


def test_each_face_is_augmented_by_its_own_keyed_draw_whatever_the_batch():
    faces = GeneratedFaces(ensure_asset("gan_face_generate"), 64, seed=4, size=SIZE).generate(range(6))
    augment = Augmentation(crop=0.6, rotate=15.0, color=0.4, blur=0.8)
    together = augment(faces, seed=1, epoch=2, indices=[10, 11, 12, 13, 14, 15])
    alone = augment(faces[3:4], seed=1, epoch=2, indices=[13])
    assert together.dtype == torch.uint8 and together.shape == faces.shape
    assert (together[3].int() - alone[0].int()).abs().max() <= 1  # batched kernels may round differently
    assert (together.float() - faces.float()).abs().mean() > 5
    for other in (augment(faces, 1, 3, range(10, 16)), augment(faces, 2, 2, range(10, 16))):  # epoch, seed
        assert (other.float() - together.float()).abs().mean() > 3


def test_crops_zoom_in_and_rotations_turn_about_the_centre():
    images = disc(64)
    zoomed = Augmentation(crop=0.25)(images, 0, 0, range(64))
    white = (zoomed[:, 0] > 127).sum((1, 2)).float() / (images[:, 0] > 127).sum((1, 2)).float()
    assert white.max() > 2.0 and white.min() > 0.3  # side >= half the face: the disc grows, never leaves
    bar = torch.zeros(8, 3, SIZE, SIZE, dtype=torch.uint8)
    bar[:, :, SIZE // 2 - 1:SIZE // 2 + 1, 4:-4] = 255
    turned = Augmentation(rotate=30.0)(bar, 0, 0, range(8))
    assert torch.equal(turned[:, :, SIZE // 2 - 1:SIZE // 2 + 1, SIZE // 2 - 1:SIZE // 2 + 1] > 200,
                       torch.ones(8, 3, 2, 2, dtype=torch.bool))  # the centre stays
    rows_hit = (turned[:, 0] > 127).any(2).sum(1)
    assert rows_hit.max() >= 6  # a horizontal bar now spans several rows


def test_colour_blur_sharpening_and_mixup_act_as_described():
    grey = torch.full((16, 3, SIZE, SIZE), 128, dtype=torch.uint8)
    jittered = Augmentation(color=0.5)(grey, 0, 0, range(16)).float()
    assert jittered.std((1, 2, 3)).max() < 0.6  # contrast and saturation keep a flat grey face flat
    assert 64 <= jittered.min() and jittered.max() <= 192 and jittered.mean((1, 2, 3)).std() > 10  # brightness
    board = checkerboard(64)
    changed = Augmentation(blur=1.0)(board, 0, 0, range(64)).float()
    contrast = changed.std((1, 2, 3)) / board.float().std((1, 2, 3))
    assert (contrast < 0.8).sum() > 16 and (contrast > 1.05).sum() > 16  # about half blurred, half sharpened
    half = Augmentation(blur=0.5)(board, 0, 0, range(64)).float()
    assert 16 <= (half == board.float()).all(3).all(2).all(1).sum() <= 48  # the rest left as they were
    pair = torch.stack([torch.zeros(3, SIZE, SIZE), torch.full((3, SIZE, SIZE), 200.0)]).to(torch.uint8)
    mixed = Augmentation(mixup=0.5)(pair, 0, 0, [0, 1]).float()
    assert 0 < mixed[0].mean() <= 100 and 100 <= mixed[1].mean() < 200  # at most half of the other face


def test_augmented_batches_resume_exactly():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, SIZE, SIZE) * 5 + checkerboard(1)
    source = lambda plan: ((images[p], torch.full((len(p),), -1)) for p in plan)  # noqa: E731
    batches = TrainBatches(source, 40, 4, 7, InputSpec(size=SIZE), True,
                           augmentation=Augmentation(crop=0.5, rotate=10.0, color=0.3, blur=0.5, mixup=0.3))
    plain = TrainBatches(source, 40, 4, 7, InputSpec(size=SIZE), True)
    full = list(batches.epoch(1))
    assert all(torch.equal(a, b) for a, b in zip(full[6:], batches.epoch(1, start_batch=6)))
    assert all((a - b).abs().mean() > 0.02 for a, b in zip(full, plain.epoch(1)))


def test_latent_interpolation_moves_the_chosen_share_of_latents_onto_a_segment():
    weights = ensure_asset("gan_face_generate")
    plain = GeneratedFaces(weights, 1000, seed=5).latents(range(400))
    mixed = GeneratedFaces(weights, 1000, seed=5, interpolation=0.5).latents(range(400))
    same = (mixed == plain).all(1)
    assert 150 < same.sum() < 250
    partner = keyed_normals(5, "latent partner", np.arange(400), 100)
    moved = ~same
    point = ((mixed - plain)[moved] / (partner - plain)[moved])  # equal along the row: on the segment
    assert torch.allclose(point, point[:, :1].expand_as(point), atol=1e-3)
    assert 0 <= point.min() and point.max() < 1
    assert mixed[moved].norm(dim=1).mean() < 0.9 * plain[moved].norm(dim=1).mean()  # nearer the average face
    with pytest.raises(ValueError, match="latent_interpolation=1.5 must be in"):
        GeneratedFaces(weights, 10, interpolation=1.5)


def test_upsampling_choices_keep_the_face_and_order_its_sharpness():
    weights = ensure_asset("gan_face_generate")
    faces = {mode: GeneratedFaces(weights, 10, seed=2, upsample=mode).generate(range(8)).float()
             for mode in ("bilinear", "bicubic", "sharp")}
    detail = {mode: (x[..., 1:] - x[..., :-1]).abs().mean() for mode, x in faces.items()}
    assert detail["bilinear"] < detail["bicubic"] < 0.9 * detail["sharp"]
    for mode in ("bilinear", "sharp"):
        assert 0 < (faces[mode] - faces["bicubic"]).abs().mean() < 8
    with pytest.raises(ValueError, match="generator_upsample='nearest' is not one of"):
        GeneratedFaces(weights, 10, upsample="nearest")
