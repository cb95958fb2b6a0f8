"""The converted MobileFaceNet matches an independent TFLite runtime and recognises real faces."""
from __future__ import annotations

import ast
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
import torch
from torch import nn
from ai_edge_litert.interpreter import Interpreter

from backbones import get_model
from assets import ensure_asset
from backbones import load_float_model
from utils.checkpoint import read_checkpoint
from backbones.layers import Add
from lab.realfaces import aligned_real_faces
from backbones.tflite import TFLiteImportError, TFLiteGraph, convert_tflite

TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tflite_path() -> Path:
    return ensure_asset("mobilefacenet_tflite_source")


@pytest.fixture(scope="module")
def model(tflite_path) -> nn.Module:
    net = get_model("mfn_tflite")
    net.load_state_dict(convert_tflite(tflite_path))
    return net.eval()


@pytest.fixture(scope="module")
def faces():
    return aligned_real_faces()


@pytest.fixture(scope="module")
def real_embeddings(model, faces) -> np.ndarray:
    return _embed(model, _normalise(faces[0]))


@pytest.fixture(scope="module")
def interpreter(tflite_path) -> Interpreter:
    runtime = Interpreter(model_path=str(tflite_path))
    runtime.allocate_tensors()
    return runtime


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) - 127.5) / 128.0).astype(np.float32)


def _reference(interpreter: Interpreter, nhwc: np.ndarray) -> np.ndarray:
    """Embeddings from the TFLite runtime; its input is fixed at batch 2, so images go in pairs."""
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (2, 112, 112, 3) and tuple(out["shape"]) == (2, 192)
    padded = np.concatenate([nhwc, nhwc[:len(nhwc) % 2]])
    result = []
    for start in range(0, len(padded), 2):
        interpreter.set_tensor(inp["index"], padded[start:start + 2])
        interpreter.invoke()
        result.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(result)[:len(nhwc)]


def _embed(model: nn.Module, nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def test_matches_tflite_runtime_on_random_and_real_faces(interpreter, model, faces, real_embeddings):
    random = _normalise(np.random.default_rng(0).uniform(0, 255, (4, 112, 112, 3)))
    for inputs, ours in ((random, _embed(model, random)), (_normalise(faces[0]), real_embeddings)):
        ref = _reference(interpreter, inputs)
        assert ours.shape == ref.shape == (len(inputs), 192)
        assert np.abs(ref).max() > 1.0  # a real signal, not all zeros
        assert np.abs(ours - ref).max() <= TOLERANCE


def test_stride2_layers_need_tf_same_padding(interpreter, model, faces):
    """Symmetric padding on the stride-2 layers moves the embeddings far beyond the tolerance."""
    real = _normalise(faces[0][:2])
    ref = _reference(interpreter, real)
    for module in model.modules():
        if isinstance(module, nn.ZeroPad2d):
            module.padding = (1, 0, 1, 0)
    try:
        assert np.abs(_embed(model, real) - ref).max() > 100 * TOLERANCE
    finally:
        for module in model.modules():
            if isinstance(module, nn.ZeroPad2d):
                module.padding = (0, 1, 0, 1)


def test_same_identity_scores_higher_than_different(faces, real_embeddings):
    _, identities, names = faces
    emb = nn.functional.normalize(torch.from_numpy(real_embeddings), dim=1).numpy()
    sim = emb @ emb.T
    full = [names.index(n) for n in ("obama", "obama2", "obama3")]
    same = [sim[i, j] for i in full for j in full if i < j]
    assert min(same) > 0.6
    others = [i for i, ident in enumerate(identities) if ident != "obama"]
    assert max(sim[i, j] for i in full for j in others) < 0.4
    assert sim[names.index("32bit"), names.index("obama2")] > 0.95  # same photo stored twice


def test_teacher_asset_is_a_loadable_project_checkpoint(model):
    path = ensure_asset("mobilefacenet_tflite")
    _, meta = read_checkpoint(path)
    assert meta["network"] == "mfn_tflite" and meta["network_kwargs"] == {}
    assert meta["input_spec"] == {"size": 112, "mean": [127.5] * 3, "std": [128.0] * 3, "channels": "RGB",
                                  "alignment": "arcface_112"} and meta["embedding_size"] == 192
    loaded = load_float_model(path).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_architecture_is_plain_convs_prelu_and_residual_adds(model):
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, Add) for m in model.modules()) == 12  # stride-1 bottlenecks: 4 + 6 + 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52 and all(c.bias is not None for c in convs)
    tree = ast.parse((Path(__file__).resolve().parent.parent / "backbones" / "mfn_tflite.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not any(name.split(".")[0] == "quant" for name in imported)
    assert get_model("mfn_tflite", num_features=128)(torch.zeros(1, 3, 112, 112)).shape == (1, 128)


def test_a_file_that_is_not_the_graph_is_refused(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(TFLiteImportError, match=str(bad)):
        convert_tflite(bad)


def _tiny_tflite(path: Path, f16: np.ndarray, i8: np.ndarray, scale: np.ndarray) -> Path:
    """A real .tflite flatbuffer: float16 weights behind a DEQUANTIZE op, per-channel int8 weights."""
    fb = flatbuffers.Builder(1024)
    buffers = []
    for data in (b"", f16.astype(np.float16).tobytes(), i8.astype(np.int8).tobytes()):
        vec = fb.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        tflite.BufferStart(fb)
        if vec is not None:
            tflite.BufferAddData(fb, vec)
        buffers.append(tflite.BufferEnd(fb))
    quant_scale, quant_zero = fb.CreateNumpyVector(scale.astype(np.float32)), \
        fb.CreateNumpyVector(np.zeros(len(scale), np.int64))
    tflite.QuantizationParametersStart(fb)
    tflite.QuantizationParametersAddScale(fb, quant_scale)
    tflite.QuantizationParametersAddZeroPoint(fb, quant_zero)
    tflite.QuantizationParametersAddQuantizedDimension(fb, 0)
    quant = tflite.QuantizationParametersEnd(fb)
    tensors = []
    for name, shape, ttype, buffer, q in (("w16", f16.shape, tflite.TensorType.FLOAT16, 1, None),
                                          ("w32", f16.shape, tflite.TensorType.FLOAT32, 0, None),
                                          ("w8", i8.shape, tflite.TensorType.INT8, 2, quant)):
        fb_name, fb_shape = fb.CreateString(name), fb.CreateNumpyVector(np.array(shape, np.int32))
        tflite.TensorStart(fb)
        tflite.TensorAddName(fb, fb_name)
        tflite.TensorAddShape(fb, fb_shape)
        tflite.TensorAddType(fb, ttype)
        tflite.TensorAddBuffer(fb, buffer)
        if q is not None:
            tflite.TensorAddQuantization(fb, q)
        tensors.append(tflite.TensorEnd(fb))
    op_in, op_out = fb.CreateNumpyVector(np.array([0], np.int32)), fb.CreateNumpyVector(np.array([1], np.int32))
    tflite.OperatorStart(fb)
    tflite.OperatorAddOpcodeIndex(fb, 0)
    tflite.OperatorAddInputs(fb, op_in)
    tflite.OperatorAddOutputs(fb, op_out)
    op = tflite.OperatorEnd(fb)
    tflite.OperatorCodeStart(fb)
    tflite.OperatorCodeAddBuiltinCode(fb, tflite.BuiltinOperator.DEQUANTIZE)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(fb, tflite.BuiltinOperator.DEQUANTIZE)
    code = tflite.OperatorCodeEnd(fb)

    def vector(start, items):
        start(fb, len(items))
        for item in reversed(items):
            fb.PrependUOffsetTRelative(item)
        return fb.EndVector()

    fb_tensors = vector(tflite.SubGraphStartTensorsVector, tensors)
    fb_ops = vector(tflite.SubGraphStartOperatorsVector, [op])
    tflite.SubGraphStart(fb)
    tflite.SubGraphAddTensors(fb, fb_tensors)
    tflite.SubGraphAddOperators(fb, fb_ops)
    subgraph = tflite.SubGraphEnd(fb)
    fb_sub = vector(tflite.ModelStartSubgraphsVector, [subgraph])
    fb_codes = vector(tflite.ModelStartOperatorCodesVector, [code])
    fb_buffers = vector(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(fb)
    tflite.ModelAddVersion(fb, 3)
    tflite.ModelAddOperatorCodes(fb, fb_codes)
    tflite.ModelAddSubgraphs(fb, fb_sub)
    tflite.ModelAddBuffers(fb, fb_buffers)
    fb.Finish(tflite.ModelEnd(fb), file_identifier=b"TFL3")
    path.write_bytes(fb.Output())
    return path


def test_float16_and_int8_weights_are_dequantized(tmp_path):
    rng = np.random.default_rng(1)
    f16 = rng.normal(size=(4, 3, 3, 2)).astype(np.float16)
    i8 = rng.integers(-127, 128, size=(4, 1, 1, 3)).astype(np.int8)
    scale = np.array([0.5, 0.25, 0.125, 2.0], np.float32)
    graph = TFLiteGraph(_tiny_tflite(tmp_path / "tiny.tflite", f16, i8, scale))
    np.testing.assert_array_equal(graph.constant(1), f16.astype(np.float32))  # through the DEQUANTIZE op
    np.testing.assert_array_equal(graph.constant(2), i8.astype(np.float32) * scale.reshape(4, 1, 1, 1))
