"""The verification protocol against a brute-force re-computation, and the flip-test embedding pipeline."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import interpolate

from backbones.spec import InputSpec
from eval.embed import embed_batches
from eval.verification import _threshold_at_far, evaluate, load_bin, verify, write_bin
from lab.realfaces import aligned_real_faces



def tiny_net() -> torch.nn.Module:
    """A small real network (conv, PReLU, BatchNorm) so the pipeline tests run in well under a second."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.PReLU(8), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(128, 32), torch.nn.BatchNorm1d(32))
    net.train()
    net(torch.randn(8, 3, 112, 112))  # non-trivial BatchNorm running statistics
    net.input_spec = InputSpec(mean=(127.5,) * 3, std=(128.0,) * 3)  # as backbones.get_model attaches it
    return net


def _reference(emb: np.ndarray, issame: list[bool], folds: int, far_target: float) -> dict[str, float]:
    """insightface's protocol written out plainly: contiguous folds, one comparison per threshold."""
    n = len(issame)
    same = np.array(issame)
    dist = np.array([np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2) for i in range(n)])
    sizes = [n // folds + (1 if k < n % folds else 0) for k in range(folds)]
    edges = np.cumsum([0] + sizes)
    accs, bests, vals, fars = [], [], [], []
    for k in range(folds):
        test = np.arange(edges[k], edges[k + 1])
        train = np.setdiff1d(np.arange(n), test)
        best_correct, best_t = -1, None
        for t in np.arange(0, 4, 0.01):
            correct = np.sum((dist[train] < t) == same[train])
            if correct > best_correct:
                best_correct, best_t = correct, t
        bests.append(best_t)
        accs.append(np.mean((dist[test] < best_t) == same[test]))

        thresholds = np.arange(0, 4, 0.001)
        negatives = dist[train][~same[train]]
        far = [np.mean(negatives < t) for t in thresholds]
        if max(far) < far_target:
            threshold = 0.0
        else:
            low = max(i for i in range(len(far)) if far[i] <= far_target)
            if far[low] == far_target:
                threshold = thresholds[low]
            else:
                slope = (thresholds[low + 1] - thresholds[low]) / (far[low + 1] - far[low])
                threshold = thresholds[low] + (far_target - far[low]) * slope
        accepted = dist[test] < threshold
        vals.append(np.sum(accepted & same[test]) / np.sum(same[test]))
        fars.append(np.sum(accepted & ~same[test]) / np.sum(~same[test]))
    return {"accuracy": np.mean(accs), "accuracy_std": np.std(accs), "best_threshold": np.mean(bests),
            "val": np.mean(vals), "val_std": np.std(vals), "far": np.mean(fars)}


def _pair_embeddings(issame: list[bool], dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors; a same pair is a vector and a noisy copy, so distances of both kinds overlap."""
    emb = []
    for same in issame:
        a = rng.normal(size=dim)
        b = a + 0.7 * rng.normal(size=dim) if same else rng.normal(size=dim)
        emb += [a / np.linalg.norm(a), b / np.linalg.norm(b)]
    return np.array(emb)


@pytest.mark.parametrize("far_target", [1e-3, 1 / 135, 2 / 135, 0.05])
def test_protocol_matches_bruteforce(far_target: float) -> None:
    rng = np.random.default_rng(3)
    issame = []
    for _ in range(10):  # 15 + 15 per fold: every training split has 135 different pairs, so 1/135 is hit exactly
        flags = [True] * 15 + [False] * 15
        rng.shuffle(flags)
        issame += flags
    emb = _pair_embeddings(issame, 16, rng)
    got = evaluate(emb, issame, nrof_folds=10, far_target=far_target)
    want = _reference(emb, issame, 10, far_target)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0.5 < got["accuracy"] < 1.0 and got["val"] > 0  # a case where thresholds matter


def test_protocol_uneven_folds() -> None:
    rng = np.random.default_rng(5)
    issame = (rng.random(203) < 0.4).tolist()  # folds of 21 and 20 pairs, unbalanced labels
    emb = _pair_embeddings(issame, 8, rng)
    got, want = evaluate(emb, issame), _reference(emb, issame, 10, 1e-3)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_val_is_undefined_when_a_fold_has_one_kind_of_pair() -> None:
    issame = [True] * 10 + [False] * 10  # folds of 2 pairs: the first five hold only same pairs
    result = evaluate(_pair_embeddings(issame, 8, np.random.default_rng(0)), issame)
    assert result["val"] is None and result["far"] is None and 0.0 <= result["accuracy"] <= 1.0


def test_far_interpolation_matches_scipy_where_scipy_accepts_the_curve() -> None:
    rng = np.random.default_rng(0)
    far = np.sort(rng.uniform(0, 0.01, 400))
    far[0] = 0.0
    thresholds = np.arange(0, 4, 0.01)
    assert np.all(np.diff(far) > 0)
    for target in (1e-3, far[17], 5e-3, far[-1]):
        want = float(interpolate.interp1d(far, thresholds, kind="slinear")(target))
        assert _threshold_at_far(far, thresholds, target) == pytest.approx(want, abs=1e-12)
    assert _threshold_at_far(far, thresholds, 0.5) == 0.0  # target never reached, as insightface


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = np.float32([[1, 0, rng.uniform(-3, 3)], [0, 1, rng.uniform(-3, 3)]])
    moved = cv2.warpAffine(image, shift, (112, 112), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)


def real_face_pairs(num_pairs: int, seed: int = 0) -> tuple[list[np.ndarray], list[bool]]:
    """Pairs of aligned real faces, alternating same (two views of one face) and different identities."""
    faces, identities, _ = aligned_real_faces()
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for k in range(num_pairs):
        i = int(rng.integers(len(faces)))
        others = [j for j in range(len(faces)) if identities[j] != identities[i]]
        j = i if k % 2 == 0 else int(rng.choice(others))
        images += [faces[i], _jitter(faces[j], rng)]
        issame.append(k % 2 == 0)
    return images, issame


def test_verify_end_to_end_on_real_faces(tmp_path: Path) -> None:
    images, issame = real_face_pairs(20)
    path = write_bin(tmp_path / "real.bin", images, issame)
    model = tiny_net()
    mean, std = 127.5, 128.0
    result = verify(model, path, "cpu", batch_size=16, workers=2)  # 40 images: 16 + 16 + 8
    assert model.training  # mode restored

    blobs, flags = load_bin(path)
    decoded = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                        for b in blobs])
    model.eval()
    with torch.no_grad():
        x = (torch.from_numpy(decoded).permute(0, 3, 1, 2).float() - mean) / std
        want = (model(x) + model(torch.flip(x, dims=[3]))).numpy()
    got = embed_batches(model, decoded, "cpu", batch_size=13)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    normalised = want / np.linalg.norm(want, axis=1, keepdims=True)
    expected = evaluate(normalised, flags)
    for key in ("accuracy", "accuracy_std", "best_threshold", "val", "far"):
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    assert result["pairs"] == 20 and result["images"] == 40
