"""ONNX face models as teachers: arcface_torch-style exports map onto this project's backbones weight by weight,
any other graph (the faceplugin MobileFaceNet) becomes quantizable modules, bad files are one clear error."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import distill
import quant
import train_quantization
from assets import ensure_asset
from assets.registry import FACEPLUGIN_SPEC
from backbones import get_model, load_float_model
from backbones.layers import Add
from backbones.onnx_graph import OnnxGraphNet
from backbones.onnx_import import OnnxImportError
from lab.realfaces import aligned_real_faces
from tests.helpers import run_inprocess, write_config
from utils.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"r18": {"num_features": 64}, "mbf": {"num_features": 64, "scale": 1},
         "vargfacenet": {"num_features": 64, "multiplier": 0.5}}


def _export_like_arcface_torch(name: str, path: Path) -> Path:
    """A random backbone with non-trivial BatchNorm statistics, exported as arcface_torch's ``torch2onnx.py``
    does (``torch.onnx.export`` of the eval model, opset 11, batch 1, constant folding: BNs fold into convs)."""
    torch.manual_seed(0)
    model = get_model(name, **SMALL[name]).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 112, 112), str(path), opset_version=11, dynamo=False,
                          do_constant_folding=True, input_names=["data"], output_names=["fc1"])
    return path


def _onnxruntime(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])


def _relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(ours.numpy() - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_arcface_torch_export_maps_onto_the_backbone_weight_by_weight(name, tmp_path) -> None:
    path = _export_like_arcface_torch(name, tmp_path / f"{name}.onnx")
    graph_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in graph_ops and "PRelu" in graph_ops
    model = load_float_model(path, name, **SMALL[name]).eval()  # strict load into the project's own backbone class
    assert type(model) is type(get_model(name, **SMALL[name]))
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert _relative_error(model(x), _onnxruntime(path, x)) < 1e-4
    generic = load_float_model(path, "onnx_graph").eval()  # the same file taken as it is
    assert isinstance(generic, OnnxGraphNet)
    with torch.no_grad():
        assert _relative_error(generic(x), _onnxruntime(path, x)) < 1e-4


def test_graph_of_another_backbone_is_refused_naming_both(tmp_path) -> None:
    path = _export_like_arcface_torch("r18", tmp_path / "r18.onnx")
    with pytest.raises(OnnxImportError, match=r"r18\.onnx: the graph has 40 .* backbone 'mbf' has \d+; it was not "
                                              r"exported from a mbf"):
        load_float_model(path, "mbf")


def test_faceplugin_model_becomes_quantizable_modules_matching_onnxruntime() -> None:
    model = load_float_model(ensure_asset("faceplugin_mbf")).eval()
    assert isinstance(model, OnnxGraphNet) and model.input_spec == FACEPLUGIN_SPEC
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.Conv2d) == 50 and kinds.count(nn.PReLU) == 33 and kinds.count(Add) == 12
    faces, identities, _ = aligned_real_faces(None, model.input_spec)
    x = model.input_spec.normalise(torch.from_numpy(faces).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = model(x)
    assert ours.shape == (len(faces), 512)
    assert _relative_error(ours, _onnxruntime(ensure_asset("faceplugin_onnx_source"), x)) < 1e-4
    student = quant.quantize_model(model, quant.QuantConfig(weight_bits=8, act_bits=8))
    assert sum(isinstance(m, quant.layers.QuantConv2d) for m in student.modules()) == 50


def _write_graph(path: Path, op: str) -> Path:
    """A real two-node ONNX file: a 3x3 conv, then ``op``."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["out"], name="the_odd_one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_unsupported_op_and_truncated_file_are_one_clear_error(tmp_path) -> None:
    odd = _write_graph(tmp_path / "odd.onnx", "Softmax")
    with pytest.raises(OnnxImportError, match=r"odd\.onnx: node 'the_odd_one' is a Softmax, which has no PyTorch "
                                              r"layer here \(supported: Conv, "):
        load_float_model(odd, "onnx_graph")
    data = ensure_asset("faceplugin_onnx_source").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError, match=r"cannot read .*cut\.onnx as an ONNX model \(\w+\); is it truncated"):
        load_float_model(cut, "onnx_graph")


def test_an_onnx_file_is_a_teacher_and_its_students_reload(tmp_path) -> None:
    path = _export_like_arcface_torch("mbf", tmp_path / "mbf.onnx")  # mbf at scale 1, as network_kwargs say
    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(faces / f"{i}.png"), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    for network in ("mbf", "onnx_graph"):
        out = tmp_path / network
        config = write_config(tmp_path / f"{network}.py", network=network, embedding_size=64, teacher=str(path),
                              network_kwargs={"scale": 1} if network == "mbf" else {},
                              data_path=str(faces), batch_size=2, num_steps=2, output=str(out))
        student, _ = run_inprocess(config)
        _, meta = read_checkpoint(out / distill.FINAL_STUDENT)
        assert meta["network"] == network and meta["teacher"] == str(path)
        loaded = quant.load_quantized(out / distill.FINAL_STUDENT).eval()
        quant.set_observers(student, False)
        x = torch.randn(2, 3, 112, 112)
        with torch.no_grad():
            assert torch.equal(loaded(x), student.eval()(x))


def test_onnx_input_spec_applies_to_onnx_teachers_only(tmp_path, capsys) -> None:
    teacher = load_float_model(ensure_asset("faceplugin_mbf"))
    assert teacher.input_spec.channels == "BGR"
    config = write_config(tmp_path / "c.py", network="mfn_tflite", embedding_size=192,
                          teacher=str(ensure_asset("mobilefacenet_tflite")), onnx_input_spec={"channels": "BGR"},
                          data_path=str(tmp_path), output=str(tmp_path / "o"))
    assert train_quantization.main([str(config)]) != 0
    assert "onnx_input_spec is set but teacher" in capsys.readouterr().err
