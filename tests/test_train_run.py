"""End-to-end QuantFace training on CPU: real teacher checkpoint files, real image folders, real models.

Small but real: r18 / MobileFaceNet at 112x112 with 64-D embeddings and batches of 2-4.  Training runs
in this process where possible; the kill-and-resume and the 2-process DDP tests start real processes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import quant
import distill
import train_quantization as tq
from backbones import get_model, input_spec, load_float_model
from data import DataSettings, GeneratedFaces, build_train_batches
from data.recordio import write_recordio
from eval.verification import write_bin
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.config import load_config
from utils.logging import read_metrics
from distill.train_state import list_checkpoints, load_training_state
from tests.helpers import run_inprocess, write_config

ROOT = Path(__file__).resolve().parent.parent
MBF = {"num_features": 64, "scale": 1}
VARG = {"num_features": 64, "multiplier": 0.5, "dropout": 0.5}  # narrow VarGFaceNet with dropout: cheap, random


pytestmark = pytest.mark.usefixtures("one_thread")


def write_faces(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` smooth random 112x112 PNG images (upsampled noise) as a training folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))
    return folder


def write_teacher(path: Path, network: str, **kwargs) -> Path:
    """A seeded random-init backbone whose BatchNorm statistics come from one pass over random inputs,
    saved as a project checkpoint (a real file in the real format)."""
    torch.manual_seed(0)
    model = get_model(network, **kwargs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.momentum = None  # cumulative average: one pass sets the statistics of that pass
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 112, 112))
    for bn in norms:
        bn.momentum = 0.1
    return save_checkpoint(path, model.state_dict(), {"network": network, "network_kwargs": kwargs})


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_assets")
    return {"r18": write_teacher(root / "r18.pt", "r18", num_features=64),
            "mbf": write_teacher(root / "mbf.pt", "mbf", **MBF),
            "vargfacenet": write_teacher(root / "vargfacenet.pt", "vargfacenet", **VARG),
            "faces2": write_faces(root / "faces2", 2), "faces8": write_faces(root / "faces8", 8, seed=1)}


def losses(output: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(output / "metrics.jsonl") if "loss" in r]


def assert_same_outputs(student: torch.nn.Module, path: Path) -> None:
    """``quant.load_quantized`` rebuilds a student whose embeddings equal the in-memory one's."""
    loaded = quant.load_quantized(path).eval()
    quant.set_observers(student, False)
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(images), student.eval()(images))


# ---- training works ---------------------------------------------------------------------------

def test_r18_w4a4_distillation_lowers_the_loss_and_saves_a_loadable_student(assets, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="r18", embedding_size=64, teacher=str(assets["r18"]),
                          data_path=str(assets["faces2"]), batch_size=2, num_steps=6, lr=0.05,
                          weight_bits=4, act_bits=4, output=str(out))
    student, summary = run_inprocess(config)
    curve = losses(out)
    assert len(curve) == 6 and all(np.isfinite(curve))
    assert curve[-1] < 0.5 * curve[0], curve  # the same 2 faces every step: the student approaches the teacher
    assert summary["bits"] == "W4A4" and summary["steps"] == 6 and summary["compression"] > 7
    assert summary["final_loss"] == pytest.approx(curve[-1])
    assert_same_outputs(student, out / distill.FINAL_STUDENT)
    _, meta = read_checkpoint(out / distill.FINAL_STUDENT)
    assert meta["network"] == "r18" and meta["network_kwargs"]["num_features"] == 64
    assert meta["input_spec"]["mean"] == [127.5] * 3 and meta["quant"]["weight_bits"] == 4
    for name in ("config.py", "config.json", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    ckpt = load_training_state(list_checkpoints(out)[-1][1])  # weights_only=True inside
    assert ckpt["step"] == 6 and ckpt["observers_enabled"] is False
    written = (out / "summary.json").read_text()
    again, summary_again = run_inprocess(config, "resume=true")  # a finished run: nothing redone
    assert summary_again == summary and (out / "summary.json").read_text() == written and len(losses(out)) == 6
    assert_same_outputs(again, out / distill.FINAL_STUDENT)


def test_block_reconstruction_runs_once_before_distillation_and_a_resumed_run_skips_it(assets, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="r18", embedding_size=64, teacher=str(assets["r18"]),
                          data_path=str(assets["faces2"]), batch_size=2, num_steps=2, save_every=1, lr=0.01,
                          weight_bits=4, act_bits=4, calibration_batches=1, observer_steps=0, reconstruct_iters=3,
                          reconstruct_images=4, reconstruct_batch_size=2, output=str(out))
    run_inprocess(config)
    report = json.loads((out / "reconstruction.json").read_text())
    assert len(report) == 9 and report[0]["block"] == "layer1.0.add" and report[-1]["layers"] == ["fc"]
    assert all(np.isfinite([r["error_before"], r["error_after"]]).all() for r in report)
    progress = torch.load(out / "reconstruction.pt", weights_only=True)
    assert progress["complete"] and progress["blocks_done"] == 9
    (out / "reconstruction.pt").unlink()
    for path in (out / distill.FINAL_STUDENT, list_checkpoints(out)[-1][1]):  # stopped after step 1
        path.unlink()
    _, summary = run_inprocess(config, "resume=true")
    assert summary["steps"] == 2 and not (out / "reconstruction.pt").exists()  # the checkpoint held the student
    assert (out / distill.FINAL_STUDENT).is_file()  # step 2 ran again and the student was written


def test_mbf_student_of_an_r18_teacher_learns_through_a_projection_and_is_verified(assets, tmp_path):
    out = tmp_path / "run"
    faces = [cv2.imread(str(p))[:, :, ::-1] for p in sorted(write_faces(tmp_path / "pairs", 20, seed=2).iterdir())]
    write_bin(tmp_path / "bins" / "lfw.bin", faces, [k % 2 == 0 for k in range(10)])
    config = write_config(tmp_path / "cfg.py", network="r18", embedding_size=64, teacher=str(assets["r18"]),
                          student_network="mbf", student_network_kwargs={"scale": 1}, student_embedding_size=32,
                          data_path=str(assets["faces2"]), batch_size=2, num_steps=8, lr=0.1, output=str(out),
                          loss="cosine", eval_data_dir=str(tmp_path / "bins"), eval_targets=["lfw"], eval_every=4,
                          eval_batch_size=8)
    student, summary = run_inprocess(config)
    curve = losses(out)
    assert curve[-1] < 0.5 * curve[0], curve  # a random-init student, 1 - cos falls from ~0.8
    verified = [r for r in read_metrics(out / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in verified] == [4, 8]  # every eval_every steps and at the end
    assert verified[-1]["eval"] == summary["eval"] and summary["eval"]["lfw"]["pairs"] == 10
    assert 0.0 <= summary["eval"]["lfw"]["accuracy"] <= 1.0
    assert summary["student"] == "mbf" and summary["teacher_network"] == "r18"
    assert_same_outputs(student, out / distill.FINAL_STUDENT)
    state, meta = read_checkpoint(out / distill.FINAL_STUDENT)
    assert meta["network"] == "mbf" and meta["network_kwargs"] == {"num_features": 32, "scale": 1}
    assert not any("projection" in key for key in state)  # the projection is not part of the student
    ckpt = load_training_state(list_checkpoints(out)[-1][1])
    assert ckpt["projection"]["projection.weight"].shape == (64, 32)


def test_feature_distillation_of_an_equalised_bias_corrected_w4a4_student_lowers_the_feature_loss(assets, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs=MBF, embedding_size=64,
                          teacher=str(assets["mbf"]), data_path=str(assets["faces2"]), batch_size=2, num_steps=6,
                          lr=0.01, weight_bits=4, act_bits=4, equalize=True, bias_correction=True,
                          calibration_batches=2, observer_steps=0,
                          feature_layers=["layers.?", "conv_sep"],
                          feature_weight=0.5, output=str(out))
    student, _ = run_inprocess(config)
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(records) == 6 and all("feature_loss" in r for r in records)
    assert all(r["loss"] > 0.5 * r["feature_loss"] for r in records)  # the total holds the weighted feature term
    assert records[-1]["feature_loss"] < 0.8 * records[0]["feature_loss"], records
    assert_same_outputs(student, out / distill.FINAL_STUDENT)
    assert read_checkpoint(out / distill.FINAL_STUDENT)[1]["quant"]["bias_correction"] is True


# ---- clear failures ---------------------------------------------------------------------------

def test_missing_or_mismatching_teacher_is_a_clear_error(assets, tmp_path, capsys):
    common = {"network": "mbf", "network_kwargs": {"scale": 1}, "embedding_size": 64,
              "data_path": str(assets["faces2"]), "batch_size": 2, "num_steps": 2}
    missing = write_config(tmp_path / "a.py", teacher=str(tmp_path / "nope.pt"), output=str(tmp_path / "a"), **common)
    assert tq.main([str(missing)]) == 2
    assert f"checkpoint not found: {tmp_path / 'nope.pt'}" in capsys.readouterr().err
    none = write_config(tmp_path / "b.py", teacher="", output=str(tmp_path / "b"), **common)
    assert tq.main([str(none)]) == 2
    assert "no teacher: set teacher=" in capsys.readouterr().err
    wrong_size = write_config(tmp_path / "c.py", teacher=str(assets["mbf"]), output=str(tmp_path / "c"),
                              **{**common, "embedding_size": 128})
    assert tq.main([str(wrong_size)]) == 2
    assert "makes 64-D embeddings but embedding_size=128" in capsys.readouterr().err
    wrong_net = write_config(tmp_path / "d.py", teacher=str(assets["r18"]), output=str(tmp_path / "d"), **common)
    assert tq.main([str(wrong_net)]) == 2
    assert "is a 'r18' but network='mbf'" in capsys.readouterr().err
    no_bins = write_config(tmp_path / "e.py", teacher=str(assets["mbf"]), output=str(tmp_path / "e"),
                           eval_data_dir=str(tmp_path), eval_targets=["lfw"], **common)
    assert tq.main([str(no_bins)]) == 2
    assert f"verification set(s) not found: {tmp_path / 'lfw.bin'}" in capsys.readouterr().err
    bad_layers = write_config(tmp_path / "f.py", teacher=str(assets["mbf"]), output=str(tmp_path / "f"),
                              feature_layers=["stage?"], **common)
    assert tq.main([str(bad_layers)]) == 2
    assert "feature_layers pattern 'stage?' matches no module" in capsys.readouterr().err
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_settings_that_cannot_apply_are_errors_naming_them(assets, tmp_path, capsys, monkeypatch):
    common = {"network": "mbf", "network_kwargs": {"scale": 1}, "embedding_size": 64, "teacher": str(assets["mbf"]),
              "data_path": str(assets["faces2"]), "batch_size": 2, "num_steps": 2}
    cases = [({"input_std": 128.0}, "input_std=128.0 disagrees with the mbf model's input spec"),
             ({"image_size": 96}, "image_size=96 disagrees with the mbf model's input spec"),
             ({"quant_mode": "quantface", "weight_symmetric": True}, "weight_symmetric=True cannot apply"),
             ({"bias_correction": True, "calibration_batches": 0}, "bias_correction=True corrects biases after"),
             ({"observer_steps": 0, "calibration_batches": 0}, "activation ranges would never be observed"),
             ({"reconstruct_iters": 5, "calibration_batches": 0}, "reconstruct_iters > 0 fits a calibrated student"),
             ({"reconstruct_iters": 5, "calibration_batches": 1, "reconstruct_drop": 1.0},
              "reconstruct_drop=1.0 must be in [0, 1)"),
             ({"reconstruct_iters": 5, "calibration_batches": 1, "bias_correction": True},
              "bias_correction=True with reconstruct_iters > 0"),
             ({"augment_crop": 0.0}, "augment_crop=0.0 must be in (0, 1]"),
             ({"augment_mixup": 0.7}, "augment_mixup=0.7 must be in [0, 0.5]"),
             ({"generator_upsample": "nearest"}, "generator_upsample='nearest' is not one of bicubic, bilinear"),
             ({"latent_interpolation": 2.0}, "latent_interpolation=2.0 must be in [0, 1]")]
    for index, (fields, message) in enumerate(cases):
        config = write_config(tmp_path / f"c{index}.py", output=str(tmp_path / f"o{index}"), **{**common, **fields})
        assert tq.main([str(config)]) == 2, fields
        assert message in capsys.readouterr().err, fields
    same = write_config(tmp_path / "same.py", output=str(tmp_path / "same"), input_mean=[127.5] * 3, input_std=127.5,
                        image_size=112, **common)  # restating the model's own spec is fine
    assert tq.main([str(same)]) == 0

    torch.manual_seed(0)
    contradicting = save_checkpoint(tmp_path / "t.pt", get_model("mbf", **MBF).state_dict(),
                                    {"network": "mbf", "network_kwargs": MBF, "input_std": 128.0})
    config = write_config(tmp_path / "t.py", output=str(tmp_path / "t"), **{**common, "teacher": str(contradicting)})
    assert tq.main([str(config)]) == 2
    assert "records input input_std=128.0, but its network expects" in capsys.readouterr().err

    real_find_spec = importlib.util.find_spec  # a machine without the tensorboard package
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else real_find_spec(name, *args))
    config = write_config(tmp_path / "tb.py", output=str(tmp_path / "tb"), tensorboard=True, **common)
    assert tq.main([str(config)]) == 2
    assert "tensorboard=True needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "tb" / "checkpoints").exists()


def test_resuming_with_other_training_settings_is_an_error_naming_them(assets, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs={"scale": 1}, embedding_size=64,
                          teacher=str(assets["mbf"]), data_path=str(assets["faces2"]), batch_size=2, num_steps=2,
                          lr=0.01, output=str(out))
    assert tq.main([str(config)]) == 0
    assert tq.main([str(config), "resume=true", "lr=0.5", "weight_bits=4"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a run with other settings (lr, weight_bits; e.g. lr was 0.01, now 0.5)" in err
    assert tq.main([str(config), "resume=true", "log_every=5"]) == 0  # bookkeeping may change
    saved = json.loads((out / "config.json").read_text())
    del saved["augment_crop"]  # a run saved before the field existed did what its default does
    (out / "config.json").write_text(json.dumps(saved))
    assert tq.main([str(config), "resume=true"]) == 0
    assert tq.main([str(config), "resume=true", "augment_crop=0.5"]) == 2
    assert "holds a run with other settings (augment_crop; e.g. augment_crop was None, now 0.5)" in capsys.readouterr().err


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs={"scale": 1}, embedding_size=64,
                          teacher=str(assets["mbf"]), data_path=str(assets["faces2"]), batch_size=2, num_steps=6,
                          lr=1e30, grad_clip=0.0, save_every=1, output=str(out))
    assert tq.main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step " in err, err
    bad_step = int(err.split("loss is nan at step ")[1].split()[0])
    saved = [step for step, _ in list_checkpoints(out)]
    assert 1 < bad_step <= 6 and saved[-1] == bad_step - 1
    assert f"the last checkpoint is {list_checkpoints(out)[-1][1]} (step {bad_step - 1})" in err, err
    for _, path in list_checkpoints(out):  # the diverged step was neither applied nor saved
        good = load_training_state(path)
        assert all(torch.isfinite(v).all() for v in good["student"].values() if v.is_floating_point())
    assert not (out / distill.FINAL_STUDENT).exists()


def test_a_teacher_giving_nan_stops_at_the_first_step_saying_no_checkpoint_exists(assets, tmp_path, capsys):
    state, meta = read_checkpoint(assets["mbf"])
    key = next(k for k in state if k.endswith("running_var"))
    state[key] = torch.full_like(state[key], float("nan"))
    teacher = save_checkpoint(tmp_path / "nan_teacher.pt", state, meta)
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs={"scale": 1}, embedding_size=64,
                          teacher=str(teacher), data_path=str(assets["faces2"]), batch_size=2, num_steps=3,
                          save_every=1, calibration_batches=0, output=str(out))
    assert tq.main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 1 (epoch 0, batch 0)" in err and "no checkpoint was saved before it" in err, err
    assert not list_checkpoints(out) and not (out / "checkpoints" / "step_00000001.pt").exists()


# ---- resume after a real kill, and DDP ----------------------------------------------------------

def _script_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_process(config: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train_quantization.py"), str(config), *overrides],
                            cwd=ROOT, env=_script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(assets, tmp_path):
    # dropout in the student, random flips and augmentation: randomness that must replay identically after resume
    common = dict(network="vargfacenet", network_kwargs=VARG, embedding_size=64, teacher=str(assets["vargfacenet"]),
                  data_path=str(assets["faces8"]), batch_size=2, num_steps=4, lr=0.05, random_flip=True,
                  augment_crop=0.7, augment_rotate=10.0, augment_color=0.3, augment_blur=0.5, augment_mixup=0.3,
                  observer_steps=3, save_every=1, keep_last=2)
    straight = write_config(tmp_path / "straight.py", output=str(tmp_path / "straight"), **common)
    killed = write_config(tmp_path / "killed.py", output=str(tmp_path / "killed"), **common)

    victim = _train_process(killed)
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000001.pt"
    deadline = time.monotonic() + 240
    while not first_checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / distill.FINAL_STUDENT).exists()
    resumed_from = list_checkpoints(tmp_path / "killed")[-1][0]
    assert 1 <= resumed_from < 4

    reference = _train_process(straight)  # runs while this test waits for the resumed run too
    resumed = _finish(_train_process(killed, "resume=true"))
    _finish(reference)
    assert f"at step {resumed_from}" in resumed
    final_straight, _ = read_checkpoint(tmp_path / "straight" / distill.FINAL_STUDENT)
    final_resumed, _ = read_checkpoint(tmp_path / "killed" / distill.FINAL_STUDENT)
    assert final_straight.keys() == final_resumed.keys()
    for key in final_straight:
        assert torch.equal(final_straight[key], final_resumed[key]), key
    assert [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert len(list_checkpoints(tmp_path / "killed")) == 2  # keep_last
    with pytest.raises(distill.TrainingError, match="already holds checkpoints"):
        run_inprocess(killed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("head", ["", "arcface"])
def test_two_process_gloo_run_ends_with_identical_weights_and_ranges_on_both_ranks(assets, tmp_path, head):
    # observers stay on through the last step: without the all-reduce of ranges the ranks would differ;
    # the margin head (labelled RecordIO) is replicated on both ranks and stays identical too
    data = {"data_source": "recordio", "data_path": str(write_labelled_recordio(tmp_path / "rec", 8, 4)),
            "margin_head": head, "num_classes": 4} if head else {"data_path": str(assets["faces8"])}
    config = write_config(tmp_path / "ddp.py", network="mbf", network_kwargs={"scale": 1}, embedding_size=64,
                          teacher=str(assets["mbf"]), batch_size=2, num_steps=3, lr=0.05, observer_steps=3,
                          output=str(tmp_path / "ddp"), **data)
    cfg = load_config(config)
    shards = [build_train_batches(DataSettings.from_config(cfg), input_spec("mbf"), "cpu", rank, 2).plan(0)
              for rank in (0, 1)]
    assert not set(shards[0].flatten().tolist()) & set(shards[1].flatten().tolist())  # ranks see different faces

    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={_free_port()}", str(ROOT / "tests" / "ddp_rank_state.py"), str(config),
                               str(tmp_path / "ranks")],
                              cwd=ROOT, env=_script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _finish(launch)
    rank0 = torch.load(tmp_path / "ranks" / "student_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ranks" / "student_rank1.pt", weights_only=True)
    ranges = [k for k in rank0 if k.endswith(("estimator.min_val", "estimator.max_val"))]
    assert ranges and all(torch.isfinite(rank0[k]).all() for k in ranges)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    if head:
        heads = [torch.load(tmp_path / "ranks" / f"loss_rank{r}.pt", weights_only=True)["head.weight"] for r in (0, 1)]
        assert torch.equal(*heads)
    final, meta = read_checkpoint(tmp_path / "ddp" / distill.FINAL_STUDENT)  # written by rank 0 only
    assert final.keys() == rank0.keys() and all(torch.equal(final[k], rank0[k]) for k in rank0)
    assert (tmp_path / "ddp" / "summary.json").is_file()


def write_labelled_recordio(folder: Path, count: int, classes: int) -> Path:
    """An insightface train.rec/.idx of ``count`` JPEG faces, sample ``i`` of class ``i % classes``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [cv2.imread(str(p)) for p in sorted(write_faces(folder / "png", count, seed=5).iterdir())]
    items = [(cv2.imencode(".jpg", image)[1].tobytes(), float(i % classes)) for i, image in enumerate(images)]
    write_recordio(folder / "train.rec", items)
    return folder


def test_margin_head_learns_on_labelled_recordio_and_is_checkpointed(assets, tmp_path, capsys):
    data = write_labelled_recordio(tmp_path / "rec", 8, 4)
    out = tmp_path / "arc"
    config = write_config(tmp_path / "arc.py", network="mbf", network_kwargs=MBF, embedding_size=64,
                          teacher=str(assets["mbf"]), data_source="recordio", data_path=str(data), batch_size=4,
                          num_steps=16, lr=0.001, optimizer="adamw", margin_head="arcface", num_classes=4,
                          margin_s=16.0, margin_m=0.3, save_every=8, output=str(out))
    run_inprocess(config)
    curve = losses(out)
    assert curve[-1] < 0.1 * curve[0], curve  # the same 8 labelled faces: the head and student learn them
    (step8, path8), (_, path16) = list_checkpoints(out)[-2:]
    assert step8 == 8 and load_training_state(path8)["projection"]["head.weight"].shape == (4, 64)
    path16.unlink()  # as if killed after step 8: the resumed run must take the very same steps 9..16
    run_inprocess(config, "resume=true")
    assert losses(out) == curve  # the log is cut back to step 8 on resume, then the same 8 losses follow
    assert tq.main([str(config), "num_classes=2", f"output={tmp_path / 'few'}"]) == 2
    assert "class labels must lie in 0..1" in capsys.readouterr().err
    assert tq.main([str(config), "data_source=folder", f"data_path={assets['faces2']}",
                    f"output={tmp_path / 'unlabelled'}"]) == 2
    assert "labelled data (data_source='recordio'" in capsys.readouterr().err


def test_recursive_distillation_trains_generations_each_from_the_last(assets, tmp_path):
    out = tmp_path / "rkd"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs=MBF, embedding_size=64,
                          teacher=str(assets["mbf"]), data_path=str(assets["faces2"]), batch_size=2, num_steps=4,
                          lr=0.05, weight_bits=4, act_bits=4, output=str(out), generations=2)
    student, summary = run_inprocess(config)
    gens = summary["generations"]
    assert [g["generation"] for g in gens] == [1, 2] and json.loads((out / "summary.json").read_text()) == summary
    first, second = losses(out / "gen1"), losses(out / "gen2")
    assert len(first) == len(second) == 4
    assert second[0] < first[0] and second[0] < 1.5 * first[-1], (first, second)  # gen 2 starts where gen 1 ended
    saved = json.loads((out / "gen2" / "config.json").read_text())
    assert saved["student_from"] == str(out / "gen1" / distill.FINAL_STUDENT) and saved["generations"] == 1
    assert_same_outputs(student, out / "gen2" / distill.FINAL_STUDENT)
    # a finished set of generations resumes without training again, to the same students
    resumed, again = run_inprocess(config, "resume=true")
    assert len(losses(out / "gen2")) == 4 and [g["steps"] for g in again["generations"]] == [4, 4]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(resumed.eval()(x), student.eval()(x))


def test_student_from_must_be_the_configured_student(assets, tmp_path, capsys):
    first = tmp_path / "first"
    config = write_config(tmp_path / "cfg.py", network="mbf", network_kwargs=MBF, embedding_size=64,
                          teacher=str(assets["mbf"]), data_path=str(assets["faces2"]), batch_size=2, num_steps=1,
                          weight_bits=4, act_bits=4, output=str(first))
    run_inprocess(config)
    student = str(first / distill.FINAL_STUDENT)
    assert tq.main([str(config), f"student_from={student}", "weight_bits=6", f"output={tmp_path / 'x'}"]) == 2
    assert "was quantized with other settings: weight_bits=4 (config 6)" in capsys.readouterr().err
    assert tq.main([str(config), f"student_from={assets['mbf']}", f"output={tmp_path / 'y'}"]) == 2
    assert "is a float checkpoint" in capsys.readouterr().err


def test_vargfacenet_student_of_the_real_teacher_moves_towards_it(tmp_path):
    """The shipped config at tiny size: a narrow VarGFaceNet from scratch learns the pretrained MobileFaceNet
    (its input spec adopted); the cosine to the teacher on held-out generated faces rises over the run."""
    out = tmp_path / "varg"
    overrides = ["num_steps=30", "batch_size=8", "calibration_batches=1", "save_every=100", "warmup_steps=0",
                 "student_network_kwargs={'multiplier': 0.25}", f"output={out}", "log_every=5"]
    config = ROOT / "config" / "vargfacenet_from_mfn_tflite.py"
    cfg = load_config(config, overrides)
    teacher = load_float_model(cfg.teacher).eval()
    faces = GeneratedFaces(cfg.generator_weights, 16, seed=99)
    held_out = teacher.input_spec.normalise(faces.generate(range(16)))

    def agreement(student: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(student.eval()(held_out), teacher(held_out)).mean())

    before = agreement(run_inprocess(config, *[o.replace("num_steps=30", "num_steps=1") for o in overrides])[0])
    student, summary = run_inprocess(config, *overrides, "resume=false", f"output={out}_full")
    after = agreement(student)
    assert summary["student"] == "vargfacenet" and summary["bits"] == "W8A8"
    assert after > before + 0.1, (before, after)
    _, meta = read_checkpoint(out.parent / "varg_full" / distill.FINAL_STUDENT)
    assert meta["network_kwargs"]["input_spec"]["std"] == [128.0] * 3  # the teacher's (x - 127.5) / 128
