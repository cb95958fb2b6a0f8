"""build_train_batches on real folder and RecordIO data: epoch order, exact resume, rank sharding, flips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backbones.spec import InputSpec
from data import DataSettings, build_train_batches
from data.recordio import write_recordio
from utils.config import ConfigError, load_config

SIZE = 16
SPEC = InputSpec(size=SIZE)  # a network with 16x16 inputs, (x - 127.5) / 127.5
COUNT = 42  # 42 // (4 * 2) = 5 batches per rank with 2 ranks, 10 with 1: last partial batch dropped


def face(i: int) -> np.ndarray:
    """RGB 16x16 image whose red channel is its id and whose green channel rises left to right."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[..., 0] = i
    image[..., 1] = np.arange(SIZE, dtype=np.uint8) * 10
    image[..., 2] = 200
    return image


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    for i in range(COUNT):
        (root / f"{i // 10}").mkdir(exist_ok=True)
        (root / f"{i // 10}" / f"{i:03d}.png").write_bytes(png(face(i)))
    return root


def config(**fields) -> DataSettings:
    """The data section of a config with these fields set (read from the flat config as training reads it)."""
    base = {"data_source": "folder", "batch_size": 4, "seed": 3}
    return DataSettings.from_config(load_config(None, [f"{k}={v}" for k, v in {**base, **fields}.items()]))


def decode(batch: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Ids (red channel) and whether each image is mirrored (green falls left to right)."""
    pixels = (batch * 127.5 + 127.5).round().to(torch.int64)
    ids = pixels[:, 0, 0, 0].tolist()
    mirrored = (pixels[:, 1, 0, 0] > pixels[:, 1, 0, -1]).tolist()
    return ids, mirrored


def run(batches, epoch: int, start_batch: int = 0) -> list[tuple[int, bool]]:
    out = []
    for batch in batches.epoch(epoch, start_batch):
        assert batch.shape == (4, 3, SIZE, SIZE) and batch.dtype == torch.float32
        out.extend(zip(*decode(batch)))
    return out


def test_epoch_order_is_deterministic_and_follows_the_plan(folder):
    batches = build_train_batches(config(data_path=str(folder)), SPEC, "cpu")
    assert batches.batches_per_epoch == COUNT // 4
    first = run(batches, 0)
    again = run(build_train_batches(config(data_path=str(folder)), SPEC, "cpu"), 0)
    assert first == again
    assert [i for i, _ in first] == batches.plan(0).reshape(-1).tolist()
    assert len({i for i, _ in first}) == 40
    other_epoch = run(batches, 1)
    assert [i for i, _ in other_epoch] != [i for i, _ in first]
    other_seed = run(build_train_batches(config(data_path=str(folder), seed=4), SPEC, "cpu"), 0)
    assert [i for i, _ in other_seed] != [i for i, _ in first]
    flips = [m for _, m in first + other_epoch]
    assert 0.2 < np.mean(flips) < 0.8  # mirrored about half the time
    unflipped = run(build_train_batches(config(data_path=str(folder), random_flip=False), SPEC, "cpu"), 0)
    assert not any(m for _, m in unflipped)


def test_resume_equals_the_tail_of_the_epoch_with_workers(folder):
    batches = build_train_batches(config(data_path=str(folder)), SPEC, "cpu", workers=2)
    full = run(batches, 2)
    assert run(batches, 2, start_batch=3) == full[3 * 4:]
    assert run(batches, 2, start_batch=batches.batches_per_epoch) == []
    assert run(batches, 2) == full  # persistent workers, a new pass after a partial one
    with pytest.raises(ValueError, match="start_batch 11 outside 0..10"):
        next(batches.epoch(0, start_batch=11))


def test_two_ranks_are_disjoint_cover_the_epoch_and_see_the_same_samples(folder):
    single = run(build_train_batches(config(data_path=str(folder)), SPEC, "cpu"), 5)
    ranks = [build_train_batches(config(data_path=str(folder)), SPEC, "cpu", rank=r, world_size=2) for r in range(2)]
    assert [r.batches_per_epoch for r in ranks] == [5, 5]
    seen = [run(r, 5) for r in ranks]
    ids = [{i for i, _ in s} for s in seen]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {i for i, _ in single}
    assert dict(seen[0] + seen[1]) == dict(single)  # each sample, flip included, is independent of the split


def test_recordio_source_gives_the_same_batches_as_the_folder(folder, tmp_path):
    write_recordio(tmp_path / "train.rec", [(png(face(i)), float(i)) for i in range(COUNT)])
    from_rec = run(build_train_batches(config(data_source="recordio", data_path=str(tmp_path)), SPEC, "cpu"), 1)
    from_folder = run(build_train_batches(config(data_path=str(folder)), SPEC, "cpu"), 1)
    assert from_rec == from_folder


def test_normalisation_follows_the_model_spec(folder):
    spec = InputSpec(size=SIZE, mean=(127.5, 127.0, 126.5), std=(128.0, 127.5, 64.0))
    batches = build_train_batches(config(data_path=str(folder), random_flip=False), spec, "cpu")
    batch = next(batches.epoch(0))
    first = int(batches.plan(0)[0, 0])
    pixels = torch.from_numpy(face(first)).permute(2, 0, 1).float()
    expected = (pixels - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    assert torch.equal(batch[0], expected)
    bgr = build_train_batches(config(data_path=str(folder), random_flip=False), InputSpec(size=SIZE, channels="BGR"),
                              "cpu")
    assert torch.equal(next(bgr.epoch(0))[0], ((pixels - 127.5) / 127.5).flip(0))


def test_calibration_batches_are_the_same_on_every_rank(folder):
    single = build_train_batches(config(data_path=str(folder)), SPEC, "cpu")
    ranks = [build_train_batches(config(data_path=str(folder)), SPEC, "cpu", rank=r, world_size=2) for r in range(2)]
    expected = list(single.epoch(0))
    for rank in ranks:
        got = list(rank.calibration())
        assert len(got) == len(expected) == 10 and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not torch.equal(next(ranks[0].epoch(0)), next(ranks[1].epoch(0)))  # training batches are sharded


def test_configuration_errors(folder, tmp_path):
    with pytest.raises(ConfigError, match="needs data_path"):
        config()
    with pytest.raises(ConfigError, match="data_source='lmdb' is not valid"):
        config(data_source="lmdb", data_path=str(folder))
    with pytest.raises(ConfigError, match="augment_mixup=0.9 must be in"):
        config(data_path=str(folder), augment_mixup=0.9)
    with pytest.raises(ValueError, match="42 training samples do not fill one batch of 32 on each of 2"):
        build_train_batches(config(data_path=str(folder), batch_size=32), SPEC, "cpu", rank=1, world_size=2)
    with pytest.raises(ValueError, match="index file .*train.idx not found"):
        (tmp_path / "train.rec").write_bytes(b"")
        build_train_batches(config(data_source="recordio", data_path=str(tmp_path)), SPEC, "cpu")


FORK_AFTER_OPENCV = """
import time, cv2, numpy as np
from data import build_train_batches
from utils.config import load_config
cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (900, 900), interpolation=cv2.INTER_AREA)  # OpenCV pool starts
time.sleep(0.5)  # and its threads fall asleep before the DataLoader workers fork
from backbones.spec import InputSpec
from data import DataSettings
cfg = DataSettings.from_config(load_config(None, ["data_source=folder", "data_path=%s", "batch_size=4"]))
print(sum(len(batch) for batch in build_train_batches(cfg, InputSpec(size=16), "cpu", workers=2).epoch(0)))
"""


def test_workers_fork_safely_after_opencv_used_threads(folder):
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_OPENCV % folder], capture_output=True, text=True,
                          timeout=180, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "40"


def test_noise_source_is_keyed_gaussian_pixels() -> None:
    cfg = DataSettings.from_config(load_config(None, ["data_source=noise", "samples_per_epoch=8", "batch_size=4",
                                                      "random_flip=false"]))
    spec = InputSpec()
    batches = build_train_batches(cfg, spec, "cpu")
    first = list(batches.epoch(0))
    assert len(first) == 2 and first[0].shape == (4, 3, 112, 112)
    pixels = first[0] * 127.5 + 127.5  # back to 0..255
    assert abs(float(pixels.mean()) - 127.5) < 1.0 and 60 < float(pixels.std()) < 68
    again = list(build_train_batches(cfg, spec, "cpu").epoch(0))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # a pure function of (seed, sample)
