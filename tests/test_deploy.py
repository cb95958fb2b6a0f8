"""deploy/: ONNX export run by onnxruntime, packed low-bit students, and evaluating the shipped files.

The int8 agreement is measured on the real pretrained teacher (a trained network, where it is meaningful);
random-init students are chaotic (a 1e-5 change of the input moves their embedding more than int8 kernels
do), so for them the graph is checked exactly where no activation rounding is involved and, with
activation rounding, against that perturbation baseline.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F

import quant
from assets import ensure_asset
from backbones import get_model, load_float_model
from data import GeneratedFaces
from lab.realfaces import aligned_real_faces
from deploy import ExportError, OnnxModel, OnnxModelError, export_onnx
from deploy.baseline import quantize_static_baseline
from deploy.cpu import has_vnni
from deploy.loading import load_model_file
from deploy.onnx_export import uint8_weight_layers
from deploy.packed import load_packed, pack_bits, save_packed, unpack_bits
from eval.verification import write_bin
from tests.helpers import optimized_ops, ran_in_own_process
import export_model as export_tool
from utils.checkpoint import CheckpointError, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent
SMALL = {"mbf": {"num_features": 64, "blocks": [1, 1, 1, 1], "scale": 1}, "r18": {"num_features": 64},
         "vargfacenet": {"num_features": 64, "multiplier": 0.5}, "mfn_tflite": {}}


@pytest.fixture(scope="module")
def faces() -> list[torch.Tensor]:
    """Five batches of 16 generated faces, normalised for the ArcFace input spec (calibration and checks)."""
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), 80, seed=5)
    spec = get_model("mbf").input_spec
    return [spec.normalise(generator.generate(range(i, i + 16))) for i in range(0, 80, 16)]


def realistic(name: str, faces: list[torch.Tensor], kwargs: dict | None = None) -> torch.nn.Module:
    """A small random-init backbone (``SMALL[name]`` unless ``kwargs`` are given) whose BatchNorm statistics
    come from a pass over faces."""
    torch.manual_seed(0)
    model = get_model(name, **(SMALL[name] if kwargs is None else kwargs))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.cat(faces[:4]))
    return model.eval()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float())


def assert_agrees_beyond_chaos(onnx_model: OnnxModel, student: torch.nn.Module, x: torch.Tensor) -> None:
    """A random-init student is chaotic: onnxruntime must agree with it at least as well as the student agrees
    with itself on an input moved by 1e-5 (and clearly, cosine > 0.7)."""
    with torch.no_grad():
        reference = student(x)
        perturbed = student(x + 1e-5 * torch.randn_like(x, generator=torch.Generator().manual_seed(0)))
    ours, baseline = cosine(onnx_model(x), reference), cosine(perturbed, reference)
    assert ours.mean() >= baseline.mean() and ours.mean() > 0.7, (ours.mean(), baseline.mean())


def assert_float_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding of a deep network: within 1e-4 of the output's largest magnitude."""
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fp32_export_and_float_activation_students_match_pytorch(name, faces, tmp_path):
    model = realistic(name, faces)
    x = faces[4][:4]
    path = export_onnx(model, tmp_path / "fp32.onnx")
    with torch.no_grad():
        assert_float_close(OnnxModel(path)(x), model(x))
    # quantized weights (BN folded at export where the student kept it), activations left float: exact
    for bn_mode in ("frozen", "fold"):
        student = quant.quantize_model(model, quant.QuantConfig(weight_bits=6, act_bits=32, bn_mode=bn_mode)).eval()
        path = export_onnx(student, tmp_path / f"w6_{bn_mode}.onnx")
        with torch.no_grad():
            assert_float_close(OnnxModel(path)(x), student(x))


@pytest.mark.parametrize("name", ["mbf", "r18", "vargfacenet"])
def test_int8_students_agree_as_closely_as_float_rounding_allows(name, faces, tmp_path):
    student = quant.post_training_quantize(realistic(name, faces), quant.QuantConfig(bn_mode="fold"), faces[:4],
                                           4).student.eval()
    assert_agrees_beyond_chaos(OnnxModel(export_onnx(student, tmp_path / "int8.onnx")), student, faces[4])


def test_a_narrow_grouped_conv_runs_in_float_and_the_rest_on_integer_kernels(faces, tmp_path):
    """arcface_torch's mbf at scale 2 has a 3x3 conv with groups of 2 channels, for which onnxruntime's integer
    kernel is 5x slower than float: the deploy placement gives it no input quantizer, so it runs as a float
    ``Conv`` (its weights still 8-bit) while every depthwise conv stays a ``QLinearConv``."""
    torch.manual_seed(0)
    model = get_model("mbf", num_features=64, blocks=[1, 1, 1, 1], scale=2)
    model.train()(torch.cat(faces[:2]))
    qcfg = quant.QuantConfig(bn_mode="fold", quantize_prelu_input=True)
    student = quant.post_training_quantize(model.eval(), qcfg, faces[:2], 2).student.eval()
    path = export_onnx(student, tmp_path / "mbf_scale2.onnx")
    optimized_ops(path, tmp_path)
    groups = {}
    for node in onnx.load(str(tmp_path / "mbf_scale2.optimized.onnx")).graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            groups.setdefault(node.op_type, []).append(group)
    assert groups.get("Conv") == [64] and len(groups["QLinearConv"]) == 7 and 64 not in groups["QLinearConv"], groups
    assert_agrees_beyond_chaos(OnnxModel(path), student, faces[4][:8])


@pytest.mark.parametrize("fci", [False, True])
def test_convs_that_run_in_float_get_constant_weights_onnxruntime_folds(fci, faces, tmp_path):
    """A conv whose output a float PReLU reads runs as a float ``Conv``: its weights are written as
    ``Mul(Cast(int8), scale)``, which onnxruntime folds at load, so no weight is dequantized at every call
    (with ``float_conv_inputs`` its input is float too); the other convs stay integer kernels."""
    qcfg = quant.QuantConfig(bn_mode="fold", float_conv_inputs=fci)
    student = quant.post_training_quantize(realistic("mbf", faces), qcfg, faces[:4], 4).student.eval()
    path = export_onnx(student, tmp_path / "mbf.onnx")
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    weights = [producer.get(node.input[1]) for node in graph.node if node.op_type == "Conv"]
    ops = optimized_ops(path, tmp_path)
    optimized = onnx.load(str(tmp_path / "mbf.optimized.onnx")).graph
    constants = {t.name for t in optimized.initializer}
    assert not [n.name for n in optimized.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    # each conv left with a dequantized weight became an integer kernel; each other one has constant weights
    assert ops.count("QLinearConv") == weights.count("DequantizeLinear") >= 4 and weights.count("Mul") >= 8, weights
    assert "QGemm" in ops
    assert_agrees_beyond_chaos(OnnxModel(path), student, faces[4][:8])


def test_int8_teacher_student_runs_on_integer_kernels_and_agrees_on_real_photos(faces, tmp_path):
    teacher = load_float_model(ensure_asset("mobilefacenet_tflite")).eval()
    spec = teacher.input_spec
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), 96, seed=5)
    calibration = [spec.normalise(generator.generate(range(i, i + 16))) for i in range(0, 64, 16)]
    qcfg = quant.QuantConfig(bn_mode="frozen", equalize=True, bias_correction=True)  # the demo's recipe
    student = quant.post_training_quantize(teacher, qcfg, calibration, 4).student.eval()
    path = export_onnx(student, tmp_path / "student.onnx", meta={"quant": qcfg.to_dict()})
    images, _, _ = aligned_real_faces(spec=spec)
    real = spec.normalise(torch.from_numpy(images).permute(0, 3, 1, 2))
    held_out = spec.normalise(generator.generate(range(64, 96)))
    model = OnnxModel(path)
    assert model.input_spec == spec and model.meta["quant"]["weight_bits"] == 8
    with torch.no_grad():
        for x, mean_goal, min_goal in ((real, 0.998, 0.995), (held_out, 0.998, 0.99)):
            agreement = cosine(model(x), student(x))  # measured here: 0.9992 / 0.9985 real, 0.9985 / 0.992 held out
            assert agreement.mean() >= mean_goal and agreement.min() >= min_goal, (agreement.mean(), agreement.min())

    ops = optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") >= 10 and "QLinearAdd" in ops  # onnxruntime fused the QDQ groups
    fp32 = export_onnx(teacher, tmp_path / "teacher.onnx")
    assert path.stat().st_size <= 0.3 * fp32.stat().st_size  # a mobile net: per-channel scales and biases add ~5 %

    # 4-bit activations are clamped to [0, 15] on the integers: the same function, not a better one
    w4 = quant.post_training_quantize(teacher, quant.QuantConfig(weight_bits=4, act_bits=4, bn_mode="frozen",
                                                                 equalize=True), calibration, 4).student.eval()
    with torch.no_grad():
        agreement = cosine(OnnxModel(export_onnx(w4, tmp_path / "w4.onnx"))(real), w4(real))
    assert agreement.mean() >= 0.999 and agreement.min() >= 0.995, (agreement.mean(), agreement.min())


def test_dlib_relu_student_runs_wholly_on_integer_kernels_and_agrees(tmp_path):
    """A trained residual ReLU network (dlib's ResNet-29): the ReLU outputs are quantized with zero point 0,
    so onnxruntime folds every ReLU into an integer conv or sum, and the quantizers before pads and pools
    move ahead of them: no float conv, ReLU or pool is left (as in quantize_static's own graph)."""
    teacher = load_float_model(ensure_asset("dlib_resnet")).eval()
    spec = teacher.input_spec
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), 96, seed=5, size=spec.size,
                               alignment=spec.alignment)
    calibration = [spec.normalise(generator.generate(range(i, i + 16))) for i in range(0, 64, 16)]
    qcfg = quant.QuantConfig(weight_bits=7, bn_mode="frozen", equalize=True, bias_correction=True)
    student = quant.post_training_quantize(teacher, qcfg, calibration, 4).student.eval()
    relus = [m for m in student.modules() if isinstance(m, quant.layers.QuantReLU)]
    assert len(relus) == 29 and all(r.output_quant.nonnegative and r.output_quant.zero_point.item() == 0
                                    for r in relus)
    path = export_onnx(student, tmp_path / "dlib_w7a8.onnx")
    ops = optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 29 and ops.count("QLinearAdd") == 14 and ops.count("QLinearAveragePool") == 4
    assert not {"Conv", "Relu", "AveragePool", "GlobalAveragePool"} & set(ops), ops
    images, _, _ = aligned_real_faces(spec=spec)
    real = spec.normalise(torch.from_numpy(images).permute(0, 3, 1, 2))
    held_out = spec.normalise(generator.generate(range(64, 96)))
    model = OnnxModel(path)
    with torch.no_grad():
        for x in (real, held_out):  # measured here: 0.99993 / 0.99985 real
            agreement = cosine(model(x), student(x))
            assert agreement.mean() >= 0.999 and agreement.min() >= 0.995, (agreement.mean(), agreement.min())
        assert cosine(student(real), teacher(real)).mean() > 0.99  # and the student is still the teacher


def test_iresnet_student_with_prelu_inputs_quantized_runs_every_conv_on_integer_kernels(faces, tmp_path):
    """``quantize_prelu_input=True`` gives the conv (and folded BN) before each PReLU an integer output, and
    the pre-activation BatchNorms that read a quantized sum export as depthwise 1x1 integer convs: no float
    conv is left; only the PReLUs (no integer kernel; written as ``a*x + (1-a)*relu(x)``) and the first
    block's ``bn1`` (it reads the stem PReLU's float output) run in float.  With int8 weight containers the
    fc still runs as ``QGemm`` (onnxruntime fuses it only when the weight zero point is written)."""
    student = quant.post_training_quantize(realistic("r18", faces), quant.QuantConfig(bn_mode="fold", quantize_prelu_input=True),
                                           faces[:2], 2).student.eval()
    path = export_onnx(student, tmp_path / "r18.onnx")
    ops, blocks, downsamples = optimized_ops(path, tmp_path), 8, 4
    prelus = 1 + blocks
    assert "Conv" not in ops and "PRelu" not in ops and ops.count("Relu") == prelus, ops
    assert ops.count("Mul") == 1 + 2 * prelus and ops.count("QGemm") == 1 and "Gemm" not in ops, ops
    assert ops.count("QLinearConv") == 1 + 2 * blocks + downsamples + (blocks - 1) + 1  # + bn1s and bn2
    int8_ops = optimized_ops(export_onnx(student, tmp_path / "r18_int8.onnx", int8_weights=True), tmp_path)
    assert int8_ops.count("QGemm") == 1 and "Gemm" not in int8_ops, int8_ops
    assert_agrees_beyond_chaos(OnnxModel(path), student, faces[4][:8])


def test_packed_students_restore_exactly_and_are_small(faces, tmp_path):
    torch.manual_seed(0)
    model = get_model("mbf").eval()  # full width (2.1 M parameters): per-channel floats weigh as in real use
    fp32 = save_checkpoint(tmp_path / "fp32.pt", model.state_dict(), {"network": "mbf", "network_kwargs": {}})
    x = faces[4][:4]
    cases = {"w6": (quant.QuantConfig(weight_bits=6, act_bits=6, bn_mode="fold"), 0.20),
             "w4": (quant.QuantConfig(weight_bits=4, act_bits=4, bn_mode="fold"), 0.14),
             "mixed": (quant.QuantConfig(weight_bits=4, act_bits=4, bn_mode="fold", quantize_prelu_input=True,  # and PReLU inputs
                                         layer_bits={"layers.0.*": [8, 8], "features.*": [8, 8]}), 0.20),
             "lsq": (quant.QuantConfig(weight_bits=4, act_bits=8, bn_mode="fold", weight_observer="lsq",
                                       act_observer="lsq"), 0.141)}  # measured 0.1403: learned ranges add state
    for label, (qcfg, ratio) in cases.items():
        student = quant.post_training_quantize(model, qcfg, faces[:2], 2).student.eval()
        with torch.no_grad():
            for q in (q for _, q in quant.quantizers(student) if q.learnable):  # move learned scales off their init
                q.scale.mul_(1.1)
            expected = student(x)
        meta = {"network": "mbf", "network_kwargs": {}, "quant": qcfg.to_dict()}
        path = save_packed(tmp_path / f"{label}.qfpack", student, meta)
        loaded, loaded_meta = load_packed(path)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), expected), label
        assert loaded_meta["quant"] == qcfg.to_dict()
        assert path.stat().st_size <= ratio * fp32.stat().st_size, (label, path.stat().st_size / fp32.stat().st_size)


def test_bit_packing_round_trips_every_width():
    generator = torch.Generator().manual_seed(0)
    for bits in range(2, 9):
        values = torch.randint(0, 2 ** bits, (1001,), generator=generator).numpy()
        packed = pack_bits(values, bits)
        assert len(packed) == math.ceil(1001 * bits / 8)
        assert (unpack_bits(packed, bits, 1001) == values).all()


def test_bad_inputs_give_one_clear_error(faces, tmp_path, capsys):
    model = realistic("mbf", faces)
    quantface = quant.QuantConfig(quant_mode="quantface", bn_mode="fold")
    student = quant.post_training_quantize(model, quantface, faces[:1], 1).student
    with pytest.raises(ExportError, match="quant_mode='quantface' students"):
        export_onnx(student, tmp_path / "qf.onnx", meta={"quant": quantface.to_dict()})
    with pytest.raises(ExportError, match="int8 kernels need per-channel symmetric weights"):  # the first layer
        export_onnx(student, tmp_path / "qf.onnx")

    good = export_onnx(model, tmp_path / "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OnnxModelError, match="cannot load ONNX model .*truncated.onnx"):
        OnnxModel(truncated)
    with pytest.raises(OnnxModelError, match="ONNX model not found"):
        OnnxModel(tmp_path / "missing.onnx")

    fp32 = save_checkpoint(tmp_path / "fp32.pt", model.state_dict(), {"network": "mbf", "network_kwargs": SMALL["mbf"]})
    assert export_tool.main([str(fp32), "--packed", str(tmp_path / "x.qfpack")]) == 2
    assert "is a float model; --packed stores quantized students" in capsys.readouterr().err
    (tmp_path / "junk.qfpack").write_bytes(b"not a file of ours")
    with pytest.raises(CheckpointError, match="cannot read packed student .*junk.qfpack"):
        load_packed(tmp_path / "junk.qfpack")


def test_export_tool_suggests_int8_weight_containers_on_vnni_cpus_only(faces, tmp_path, capsys):
    """8-bit weights get uint8 containers by default (exact on AVX2, slow on VNNI): the tool says so where this
    CPU has VNNI, and not once ``--int8-weights`` is given or elsewhere."""
    qcfg = quant.QuantConfig(bn_mode="fold")
    student = quant.post_training_quantize(realistic("mbf", faces), qcfg, faces[:2], 2).student
    ckpt = quant.save_quantized(tmp_path / "student.pt", student, "mbf", SMALL["mbf"], qcfg)
    for extra, expected in (([], has_vnni()), (["--int8-weights"], False)):
        assert export_tool.main([str(ckpt), "-o", str(tmp_path / "student.onnx"), *extra]) == 0
        out = capsys.readouterr().out
        assert "wrote" in out and ("--int8-weights" in out) == expected, out
        assert bool(uint8_weight_layers(onnx.load(str(tmp_path / "student.onnx")))) == (not extra)
    # weights quantized, activations float: every conv runs in float, its weights int8 constants: no note
    w8 = quant.QuantConfig(act_bits=32, bn_mode="fold")
    ckpt = quant.save_quantized(tmp_path / "w8.pt", quant.quantize_model(realistic("mbf", faces), w8), "mbf",
                                SMALL["mbf"], w8)
    assert export_tool.main([str(ckpt), "-o", str(tmp_path / "w8.onnx")]) == 0
    assert "--int8-weights" not in capsys.readouterr().out
    assert uint8_weight_layers(onnx.load(str(tmp_path / "w8.onnx"))) == []


def test_export_tool_and_eval_benchmarks_run_the_shipped_files(faces, tmp_path):
    model = realistic("mbf", faces)
    qcfg = quant.QuantConfig(weight_bits=4, act_bits=8, bn_mode="fold")
    student = quant.post_training_quantize(model, qcfg, faces[:2], 2).student
    ckpt = quant.save_quantized(tmp_path / "student.pt", student, "mbf", SMALL["mbf"], qcfg)
    assert export_tool.main([str(ckpt), "-o", str(tmp_path / "student.onnx"),
                             "--packed", str(tmp_path / "student.qfpack")]) == 0
    images, identities, _ = aligned_real_faces()
    pairs = [(images[i], images[j]) for i in range(6) for j in range(i + 1, 6)][:10]
    write_bin(tmp_path / "lfw.bin", [face for pair in pairs for face in pair],
              [identities[i] == identities[j] for i in range(6) for j in range(i + 1, 6)][:10])
    out = tmp_path / "eval"
    run = subprocess.run([sys.executable, "eval_benchmarks.py", "--checkpoint", str(ckpt), str(tmp_path / "student.onnx"),
                          str(tmp_path / "student.qfpack"), "--data-dir", str(tmp_path), "--targets", "lfw",
                          "--device", "cpu", "--workers", "1", "--out", str(out), "--runtime", "onnxruntime"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    entries = {Path(e["path"]).suffix: e for e in json.loads((out / "results.json").read_text())["checkpoints"]}
    assert entries[".onnx"]["runtime"] in ("OnnxModel", "OpenVinoModel") and entries[".onnx"]["bits"] == "W4A8"
    assert entries[".onnx"]["runtime_choice"].startswith({"OnnxModel": "onnxruntime (",  # --runtime auto: said why
                                                         "OpenVinoModel": "openvino ("}[entries[".onnx"]["runtime"]])
    assert entries[".qfpack"]["verification"]["lfw"]["accuracy"] == entries[".pt"]["verification"]["lfw"]["accuracy"]
    assert abs(entries[".onnx"]["verification"]["lfw"]["accuracy"]
               - entries[".pt"]["verification"]["lfw"]["accuracy"]) <= 0.2  # 10 pairs: one pair is 0.1
    model_file, _, size_mb = load_model_file(tmp_path / "student.onnx")
    assert isinstance(model_file, OnnxModel) and size_mb == pytest.approx((tmp_path / "student.onnx").stat().st_size / 1e6)


def test_quantize_static_baseline_takes_relative_paths(faces, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export_onnx(realistic("mbf", faces), Path("fp32.onnx"))
    out = quantize_static_baseline("fp32.onnx", faces[:1], Path("runs") / "qs.onnx")
    model = OnnxModel(out, spec=get_model("mbf").input_spec)
    assert (tmp_path / "runs" / "qs.onnx").is_file() and model(faces[4][:2]).shape == (2, 64)
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("share", [False, True])
def test_a_tensor_two_layers_read_is_quantized_once_so_its_conv_runs_on_an_integer_kernel(share, faces, tmp_path):
    """arcface_torch's mbf with PReLU inputs quantized: each stage's first residual block reads the projection
    conv before it twice (expansion conv and residual sum).  With one shared quantizer there is one
    QuantizeLinear and onnxruntime makes that conv a ``QLinearConv``: no float conv is left.  With one
    quantizer per reader (older students) the three projection convs run in float."""
    qcfg = quant.QuantConfig(bn_mode="fold", quantize_prelu_input=True, share_input_quantizers=share)
    student = quant.post_training_quantize(realistic("mbf", faces), qcfg, faces[:2], 2).student.eval()
    path = export_onnx(student, tmp_path / "mbf.onnx")
    ops = optimized_ops(path, tmp_path)
    assert ops.count("Conv") == (0 if share else 3) and ops.count("QLinearConv") == 22 - ops.count("Conv"), ops
    assert_agrees_beyond_chaos(OnnxModel(path), student, faces[4][:8])


def _demo_student(placement: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The demo's pretrained teacher quantized with the demo's recipe and ``placement``, and the real photos."""
    teacher = load_float_model(ensure_asset("mobilefacenet_tflite")).eval()
    spec = teacher.input_spec
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), 64, seed=5)
    calibration = [spec.normalise(generator.generate(range(i, i + 16))) for i in range(0, 64, 16)]
    qcfg = quant.QuantConfig(bn_mode="frozen", equalize=True, bias_correction=True, **placement)
    images, _, _ = aligned_real_faces(spec=spec)
    return (quant.post_training_quantize(teacher, qcfg, calibration, 4).student.eval(),
            spec.normalise(torch.from_numpy(images).permute(0, 3, 1, 2)))


# measured on an AVX2 EPYC (no VNNI), cosine mean / min on the real photos, onnxruntime | OpenVINO:
# fci 0.99929 / 0.99657 | 0.99901 / 0.99774 (OpenVINO 0.99325 / 0.98457 before 8-bit float-conv weights kept
# their uint8 container); PReLU-in 0.99855 / 0.99513 | 0.99710 / 0.99369 (OpenVINO fuses a conv, the
# quantizer of its output and the residual add into one kernel that skips the rounding between them)
OPENVINO_PLACEMENTS = {"fci": ({"float_conv_inputs": True}, (0.999, 0.995)),
                       "prelu_input": ({"quantize_prelu_input": True}, (0.996, 0.99))}


@pytest.mark.parametrize("placement", sorted(OPENVINO_PLACEMENTS))
def test_int8_file_agrees_with_its_student_on_each_runtime(placement, tmp_path, request):
    """The shipped int8 file computes the student's function on onnxruntime and on OpenVINO alike (per
    placement); OpenVINO's own kernels, not onnxruntime's, decide what it runs."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    if ran_in_own_process(request):
        return
    from deploy.openvino_runtime import OpenVinoModel
    change, (mean_goal, min_goal) = OPENVINO_PLACEMENTS[placement]
    student, real = _demo_student(change)
    path = export_onnx(student, tmp_path / f"{placement}.onnx")
    with torch.no_grad():
        expected = student(real)
        for runner in (OnnxModel(path), OpenVinoModel(path)):
            agreement = cosine(runner(real), expected)
            assert agreement.mean() >= mean_goal and agreement.min() >= min_goal, \
                (type(runner).__name__, float(agreement.mean()), float(agreement.min()))


def test_openvino_model_reads_the_file_like_onnxruntime_and_auto_says_which_runs(faces, tmp_path, request):
    """Same interface (input spec and meta from the file, fixed or any batch size), float files within float
    rounding, and ``auto`` picks one of the two with its reason."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    if ran_in_own_process(request):
        return
    from deploy.openvino_runtime import OpenVinoModel, open_onnx
    model = realistic("mbf", faces)
    path = export_onnx(model, tmp_path / "fp32.onnx", meta={"network": "mbf"})
    runner = OpenVinoModel(path, threads=1)
    assert runner.input_spec == model.input_spec and runner.meta == {"network": "mbf"}
    with torch.no_grad():
        for x in (faces[4][:3], faces[4][:5]):  # two batch sizes: one compiled model each
            assert_float_close(runner(x), model(x))
    chosen, choice = open_onnx(path, "auto", threads=1)
    assert choice.startswith({OnnxModel: "onnxruntime (", OpenVinoModel: "openvino ("}[type(chosen)]), choice
    assert "images/s" in choice and "agree" in choice, choice
    with pytest.raises(OnnxModelError, match="ONNX model not found"):
        OpenVinoModel(tmp_path / "missing.onnx")
