"""Data-free faces from BatchNorm statistics (ZeroQ): they shrink the statistics gap, are reproducible, are
refused for a teacher without statistics, and train a student through data_source='bn_stats'."""
from __future__ import annotations

import pytest
import torch

import distill
from assets import ensure_asset
from backbones import get_model, load_float_model
from data import GeneratedFaces
from data.bn_statistics import StatisticsGap, bn_statistics_faces
from data.train_batches import BN_STATS_FILE
from tests.helpers import run_inprocess, write_config
from utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
KWARGS = {"num_features": 32, "blocks": [1, 1, 1, 1], "scale": 1}


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """A small MobileFaceNet whose BatchNorm statistics come from one pass over generated faces."""
    torch.manual_seed(0)
    model = get_model("mbf", **KWARGS)
    faces = GeneratedFaces(ensure_asset("gan_face_generate"), 32, seed=3)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(model.input_spec.normalise(faces.generate(range(32))))
    return model.eval()


def _gap(teacher: torch.nn.Module, images: torch.Tensor) -> float:
    gap = StatisticsGap(teacher)
    with torch.no_grad():
        teacher(teacher.input_spec.normalise(images))
    value = float(gap.take())
    gap.close()
    return value


def test_bn_statistics_faces_shrink_the_statistics_gap_and_are_reproducible(teacher) -> None:
    spec = teacher.input_spec
    images = bn_statistics_faces(teacher, 6, spec, seed=1, batch_size=3, steps=40, lr=0.1)
    assert images.shape == (6, 3, 112, 112) and images.dtype == torch.uint8
    noise = bn_statistics_faces(teacher, 6, spec, seed=1, batch_size=3, steps=1, lr=1e-9)  # the starting noise
    assert _gap(teacher, images) < 0.6 * _gap(teacher, noise), (_gap(teacher, images), _gap(teacher, noise))
    assert torch.equal(images, bn_statistics_faces(teacher, 6, spec, seed=1, batch_size=3, steps=40, lr=0.1))
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is left as it was


def test_a_teacher_without_statistics_is_refused() -> None:
    folded = load_float_model(ensure_asset("mobilefacenet_tflite"))  # BatchNorm folded into its convs
    with pytest.raises(ValueError, match="has no BatchNorm statistics .* use data_source='generator'"):
        bn_statistics_faces(folded, 2, folded.input_spec, steps=1)


def test_a_student_distils_on_bn_statistics_faces_made_once_per_run(teacher, tmp_path) -> None:
    path = save_checkpoint(tmp_path / "teacher.pt", teacher.state_dict(), {"network": "mbf", "network_kwargs": KWARGS})
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs=KWARGS, embedding_size=32,
                          teacher=str(path), data_source="bn_stats", samples_per_epoch=8, bn_stats_steps=5,
                          batch_size=4, num_steps=3, output=str(out), calibration_batches=1, observer_steps=0)
    _, summary = run_inprocess(config)
    assert summary["steps"] == 3 and (out / BN_STATS_FILE).is_file()
    made = (out / BN_STATS_FILE).stat().st_mtime_ns
    run_inprocess(config, "resume=true")  # resumed: the images are read back, not made again
    assert (out / BN_STATS_FILE).stat().st_mtime_ns == made and (out / distill.FINAL_STUDENT).is_file()
