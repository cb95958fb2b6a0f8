"""DCGAN faces: strict loading, determinism per (seed, index), the generate_faces tool, generator batches."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from backbones.spec import ARCFACE
from data import DataSettings, FaceFolderDataset, GeneratedFaces, build_train_batches
from data.dcgan import load_dcgan
from tools.generate_faces import main as generate_faces
from assets import ensure_asset
from utils.checkpoint import CheckpointError
from utils.config import load_config


@pytest.fixture(scope="module")
def weights():
    return ensure_asset("gan_face_generate")


@pytest.fixture(scope="module")
def faces(weights):
    return GeneratedFaces(weights, count=1000, seed=7, batch_size=3)


def test_weights_load_strictly(weights, tmp_path):
    generator = load_dcgan(weights)
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    del blob["netG_state_dict"]["main.4.running_var"]
    torch.save(blob, tmp_path / "partial.tar")
    with pytest.raises(CheckpointError,
                       match=r"partial\.tar does not fit the model: missing keys: main\.4\.running_var"):
        load_dcgan(tmp_path / "partial.tar")
    with pytest.raises(CheckpointError, match="tools.fetch_assets"):
        load_dcgan(tmp_path / "absent.tar")


def test_face_depends_only_on_seed_and_index(faces, weights):
    batch = faces.generate([3, 10, 7, 500])  # chunks of 3: index 500 is generated alone
    assert batch.shape == (4, 3, 112, 112) and batch.dtype == torch.uint8
    assert torch.equal(faces.latents([10]), faces.latents([3, 10, 7])[1:2])
    other_batching = GeneratedFaces(weights, count=1000, seed=7, batch_size=8)
    again = other_batching.generate([500, 10, 42])
    for got, want in ((again[0], batch[3]), (again[1], batch[1])):
        assert (got.int() - want.int()).abs().max() <= 1  # same latent; kernels may round differently per batch
    assert (batch[0].float() - batch[1].float()).abs().mean() > 10  # different index, different face
    other_seed = GeneratedFaces(weights, count=1000, seed=8).generate([10])[0]
    assert (other_seed.float() - batch[1].float()).abs().mean() > 10
    assert torch.equal(faces[10], batch[1])


def test_faces_look_like_faces_in_rgb_order(faces):
    images = faces.generate(range(16)).float()
    assert images.std() > 30  # not blank
    centre = images[:, :, 40:72, 40:72].mean(dim=(0, 2, 3))  # skin: red > green > blue
    assert centre[0] > centre[1] > centre[2], centre


def test_generate_faces_tool_matches_the_generator(weights, tmp_path):
    out = generate_faces(["--out", str(tmp_path / "faces"), "--count", "10", "--seed", "7", "--weights",
                          str(weights), "--batch-size", "4", "--device", "cpu"])
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{i:07d}.png" for i in range(10)]
    folder = FaceFolderDataset(out)
    reference = GeneratedFaces(weights, count=10, seed=7, batch_size=4).generate(range(10))
    for i in range(10):
        np.testing.assert_array_equal(folder.read(i), reference[i].permute(1, 2, 0).numpy())
    sheet = cv2.imread(str(tmp_path / "faces_contact_sheet.png"))
    assert sheet.shape == (224, 896, 3)
    np.testing.assert_array_equal(sheet[112:, 224:], 0)  # 10 faces: the second row is 2 faces then black
    assert sheet[112:, :224].std() > 30


def generator_config(weights, **fields):
    base = {"data_source": "generator", "generator_weights": str(weights), "samples_per_epoch": 14,
            "batch_size": 3, "seed": 7}
    return DataSettings.from_config(load_config(None, [f"{k}={v}" for k, v in {**base, **fields}.items()]))


def by_index(batches, epoch: int, start_batch: int = 0) -> dict[int, torch.Tensor]:
    plan = batches.plan(epoch, start_batch).reshape(-1).tolist()
    images = torch.cat(list(batches.epoch(epoch, start_batch)))
    return dict(zip(plan, images))


def test_generator_batches_resume_shard_and_ignore_batch_size(weights):
    batches = build_train_batches(generator_config(weights), ARCFACE, "cpu")
    assert batches.batches_per_epoch == 4
    full = by_index(batches, 1)
    assert list(full) == batches.plan(1).reshape(-1).tolist() and len(full) == 12
    tail = by_index(batches, 1, start_batch=3)
    assert list(tail) == list(full)[9:]
    assert all(torch.equal(tail[i], full[i]) for i in tail)
    ranks = [by_index(build_train_batches(generator_config(weights), ARCFACE, "cpu", r, 2), 1) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 6
    assert set(ranks[0]) | set(ranks[1]) == set(full)
    larger = by_index(build_train_batches(generator_config(weights, batch_size=4), ARCFACE, "cpu"), 1)
    for shard in (ranks[0], ranks[1], larger):
        for i, image in shard.items():
            if i in full:
                assert (image - full[i]).abs().max() <= 1.01 / 127.5
    assert set(larger) == set(full)
    unflipped = GeneratedFaces(weights, count=14, seed=7).generate(list(full)).float()
    # mirrored: nearer the flipped face than the face (a face may differ by one level between batch sizes)
    mirrored = [(full[i] - (face.flip(-1) - 127.5) / 127.5).abs().max() < (full[i] - (face - 127.5) / 127.5).abs().max()
                for i, face in zip(full, unflipped)]
    assert all(torch.allclose(full[i], ((face.flip(-1) if m else face) - 127.5) / 127.5, atol=1.01 / 127.5)
               for i, face, m in zip(full, unflipped, mirrored))
    assert 0 < sum(mirrored) < 12
