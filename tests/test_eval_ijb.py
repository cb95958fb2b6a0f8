"""IJB template verification on a mini set in the released format, built from real photos."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from data.align import align_face
from eval.ijb import FAR_LEVELS, IjbFormatError, TemplateAccumulator, evaluate_ijb, far_key, load_ijb, tar_at_far
from eval.scores import pair_scores
from test_eval_verification import tiny_net
from data.images import read_rgb
from lab.realfaces import real_faces


def build_mini_ijb(root: Path, target: str = "IJBC", crops: int = 3) -> Path:
    """``root/meta/*`` + ``root/loose_crop/*.jpg`` as released: every real face gives ``crops`` loose crops;
    crop 0 is template A (one still), the others template B (frames of one video)."""
    prefix = target.lower()
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    tid_lines, lmk_lines, identity_of = [], [], {}
    number = 0
    for f, face in enumerate(real_faces()):
        photo = cv2.cvtColor(read_rgb(face.photo_path), cv2.COLOR_RGB2BGR)
        height, width = photo.shape[:2]
        centre = face.landmarks.mean(0)
        extent = float(np.ptp(face.landmarks, axis=0).max())
        for crop, (margin, dx) in enumerate([(1.6, 0.0), (2.0, 0.1), (1.3, -0.1)][:crops]):
            x0 = int(np.clip(centre[0] - margin * extent + dx * extent, 0, width - 1))
            y0 = int(np.clip(centre[1] - margin * extent, 0, height - 1))
            x1 = int(np.clip(centre[0] + margin * extent + dx * extent, x0 + 1, width))
            y1 = int(np.clip(centre[1] + margin * extent, y0 + 1, height))
            number += 1
            name = f"{number}.jpg"
            cv2.imwrite(str(root / "loose_crop" / name), photo[y0:y1, x0:x1])
            points = face.landmarks - np.array([x0, y0], np.float32)
            template = 2 * f + 1 if crop == 0 else 2 * f + 2
            media = 100 + 2 * f if crop == 0 else 101 + 2 * f
            identity_of[template] = face.identity
            tid_lines.append(f"{name} {template} {media}")
            score = face.score * (1.0 - 0.05 * crop)
            lmk_lines.append(" ".join([name, *(f"{v:.3f}" for v in points.reshape(-1)), f"{score:.4f}"]))
    pairs = [f"{a} {b} {int(identity_of[a] == identity_of[b])}" for a, b in combinations(sorted(identity_of), 2)]
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


def _insightface_templates(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> dict[int, np.ndarray]:
    """Media average, template sum, L2 norm: insightface's image2template_feature, loop by loop."""
    out = {}
    for t in np.unique(templates):
        in_t = templates == t
        media_feats = [feats[in_t & (medias == m)].mean(0) for m in np.unique(medias[in_t])]
        total = np.sum(media_feats, axis=0)
        out[int(t)] = total / np.linalg.norm(total)
    return out


def _tar_from_sklearn(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    best = None
    for i in range(len(fpr)):  # closest FPR; among equally close points the later (higher TPR) one
        if best is None or abs(fpr[i] - far) <= abs(fpr[best] - far):
            best = i
    return float(tpr[best])


def test_ijb_end_to_end_on_real_photos(tmp_path: Path) -> None:
    ijb = load_ijb(build_mini_ijb(tmp_path / "IJBC"), "ijbc")
    assert len(ijb.names) == 3 * len(real_faces()) and ijb.landmarks.shape == (len(ijb.names), 5, 2)
    model = tiny_net()
    mean, std = 127.5, 128.0  # tiny_net's input spec
    result = evaluate_ijb(model, ijb, "cpu", batch_size=8, workers=2)
    assert model.training

    model.eval()
    faces = []
    for name, points in zip(ijb.names, ijb.landmarks):
        image = cv2.imread(str(tmp_path / "IJBC" / "loose_crop" / name))
        faces.append(cv2.cvtColor(align_face(image, points), cv2.COLOR_BGR2RGB))
    with torch.no_grad():
        x = (torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() - mean) / std
        feats = (model(x) + model(x.flip(3))).numpy().astype(np.float64) * ijb.scores[:, None]
    templates = _insightface_templates(feats, ijb.templates, ijb.medias)
    want = np.array([templates[a] @ templates[b] for a, b in ijb.pairs])
    np.testing.assert_allclose(result.scores, want, atol=1e-5)

    metrics = result.metrics
    assert metrics["templates"] == len(templates) and metrics["pairs"] == len(ijb.pairs)
    assert 0 < ijb.labels.sum() < len(ijb.labels)
    for far in FAR_LEVELS:
        assert metrics["tar_at_far"][far_key(far)] == pytest.approx(_tar_from_sklearn(ijb.labels, want, far))


def test_template_accumulator_streams_like_the_batch_computation() -> None:
    rng = np.random.default_rng(0)
    n = 500
    templates = rng.integers(10, 60, n)
    medias = templates * 10 + rng.integers(0, 3, n)  # a few media per template, several faces per media
    scores = rng.uniform(0.5, 1.0, n).astype(np.float32)
    feats = rng.normal(size=(n, 24)).astype(np.float32)
    acc = TemplateAccumulator(templates, medias, scores, "cpu")
    for start in range(0, n, 37):  # uneven batches
        acc.add(start, torch.from_numpy(feats[start:start + 37]))
    ids, got = acc.templates()
    want = _insightface_templates(feats.astype(np.float64) * scores[:, None], templates, medias)
    assert ids.tolist() == sorted(want)
    np.testing.assert_allclose(got.numpy(), np.stack([want[t] for t in ids]), atol=1e-5)

    pairs = rng.choice(ids, size=(1000, 2))
    scores_out = pair_scores(got, np.searchsorted(ids, pairs), chunk=64)
    np.testing.assert_allclose(scores_out, [want[a] @ want[b] for a, b in pairs], atol=1e-5)


def test_tar_at_far_follows_sklearn_roc() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(20000) < 0.1).astype(int)
    scores = rng.normal(size=labels.size) + 2.0 * labels
    scores[:200] = np.round(scores[:200], 1)  # some ties
    table, fpr, tpr, area = tar_at_far(labels, scores)
    for far in FAR_LEVELS:
        assert table[far_key(far)] == pytest.approx(_tar_from_sklearn(labels, scores, far))
    assert 0.9 < area < 1.0 and table["1e-01"] > table["1e-04"]
    perfect, *_ = tar_at_far(labels, labels.astype(float))
    assert all(v == 1.0 for v in perfect.values())


def test_meta_errors_name_file_and_line(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "ijbb_face_tid_mid.txt").write_text("1.jpg 1 1\n2.jpg 2 2\n")
    (meta / "ijbb_name_5pts_score.txt").write_text("1.jpg " + "1 " * 10 + "0.9\n3.jpg " + "1 " * 10 + "0.9\n")
    (meta / "ijbb_template_pair_label.txt").write_text("1 2 0\n")
    with pytest.raises(IjbFormatError, match="face 2: .*'2.jpg' but .*'3.jpg'"):
        load_ijb(tmp_path, "IJBB")
    (meta / "ijbb_name_5pts_score.txt").write_text("1.jpg " + "1 " * 10 + "0.9\n2.jpg " + "1 " * 10 + "0.9\n")
    (meta / "ijbb_template_pair_label.txt").write_text("1 2 0\n1 7 1\n")
    with pytest.raises(IjbFormatError, match=r"template ids \[7\]"):
        load_ijb(tmp_path, "IJBB")
    (meta / "ijbb_template_pair_label.txt").write_text("1 2 0\n1 2\n")
    with pytest.raises(IjbFormatError, match="ijbb_template_pair_label.txt: expected 3 integers"):
        load_ijb(tmp_path, "IJBB")
    with pytest.raises(IjbFormatError, match="--ijb-dir must point"):
        load_ijb(tmp_path, "IJBC")
    (meta / "ijbb_template_pair_label.txt").write_text("1 2 0\n")  # now it loads; a missing image is named
    ijb = load_ijb(tmp_path, "IJBB")
    with pytest.raises(IjbFormatError, match=r"loose_crop/1\.jpg"):
        evaluate_ijb(tiny_net(), ijb, "cpu", batch_size=2, workers=1)
