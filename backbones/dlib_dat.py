"""Import dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into a ``dlib_resnet`` checkpoint.

The file is dlib's own binary serialisation of its network type (dlib ``serialize.h``, ``dnn/core.h``):
integers are a control byte (length, sign bit 0x80) plus little-endian bytes; floats are an integer
mantissa and exponent; strings a length and bytes; bools '0'/'1'; tensors a version (2), four
dimensions and raw little-endian float32s.  A network is a chain of layers, outermost first.  Each
``add_layer`` writes its version, then its whole sub-network, then its own parameters, so the file
is: every wrapper's version, outside in, then the layers' parameters in forward order.  Tag and skip
layers write only a version; which tag a skip or sum refers to lives in the C++ type, not the file.
The chain is therefore built here from the architecture (``backbones.dlib_resnet``) and the file is
read against it: a wrong layer name, a kernel, stride or shape that differs, bytes left over or
missing, each is an error naming the byte offset and the layer.  dlib's affine layers are folded
into the convolutions before them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backbones.converted import write_converted
from backbones.dlib_resnet import INPUT_SPEC, STAGES, DlibResNet
from utils.checkpoint import load_state_strict
from utils.errors import InputError

NETWORK = "dlib_resnet"
CONVERTER_VERSION = 1


class DlibImportError(InputError, ValueError):
    """The .dat is not dlib's ResNet-29 face model; the message names the byte offset and the layer."""


class _Reader:
    """dlib's serialisation primitives over a bytes buffer, with the offset in every error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> DlibImportError:
        return DlibImportError(f"{self.path}: byte {self.pos}: {what}")

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise self.fail(f"the file ends inside {what} (truncated? {len(self.data)} bytes)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str) -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"{what}: not a dlib integer (control byte {control:#04x})")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def real(self, what: str) -> float:
        mantissa, exponent = self.integer(what), self.integer(what)
        if exponent >= 32000:  # dlib's markers for inf / -inf / nan
            raise self.fail(f"{what}: a non-finite number")
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, what: str) -> str:
        length = self.integer(what)
        if length > 256:
            raise self.fail(f"{what}: a string of {length} bytes; this is not a dlib network file")
        return self.take(length, what).decode("latin-1")

    def boolean(self, what: str) -> bool:
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            raise self.fail(f"{what}: expected a bool ('0' or '1'), found {char!r}")
        return char == b"1"

    def version(self, expected: tuple[int, ...], what: str) -> int:
        start, value = self.pos, self.integer(what)
        if value not in expected:
            self.pos = start
            raise self.fail(f"{what}: version {value}, expected {' or '.join(map(str, expected))}")
        return value

    def tag(self, expected: tuple[str, ...], what: str) -> str:
        start, name = self.pos, self.string(what)
        if name not in expected:
            self.pos = start
            raise self.fail(f"{what}: found dlib layer '{name}', expected {' or '.join(expected)}; "
                            "this is not dlib's ResNet-29 face model (dlib_face_recognition_resnet_model_v1)")
        return name

    def tensor(self, what: str) -> np.ndarray:
        self.version((2,), f"{what} tensor")
        dims = [self.integer(f"{what} tensor shape") for _ in range(4)]
        count = int(np.prod(dims))
        return np.frombuffer(self.take(4 * count, f"{what} tensor data"), dtype="<f4").reshape(dims)

    def alias(self, what: str) -> tuple[int, ...]:
        self.version((1,), f"{what} alias")
        return tuple(self.integer(f"{what} alias shape") for _ in range(4))


@dataclass
class Layer:
    """One dlib layer of the chain: ``kind`` as dlib names its details, plus what it must hold."""

    kind: str                    # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    name: str = ""               # the dlib_resnet module it fills (con, fc)
    shape: tuple[int, ...] = ()  # con: (out, in, k, k); fc: (in, out)
    stride: int = 1
    params: dict[str, np.ndarray] = field(default_factory=dict)


def _block_chain(prefix: str, cin: int, cout: int, down: bool) -> list[Layer]:
    """Forward order of dlib's ``ares`` / ``ares_down`` (tags and skips included, as serialised)."""
    stride = 2 if down else 1
    convs = [Layer("tag"), Layer("con", f"{prefix}.conv1", (cout, cin, 3, 3), stride), Layer("affine"),
             Layer("relu"), Layer("con", f"{prefix}.conv2", (cout, cout, 3, 3)), Layer("affine")]
    shortcut = [Layer("tag"), Layer("skip"), Layer("avg_pool", shape=(2, 2), stride=2)] if down else []
    return convs + shortcut + [Layer("add_prev"), Layer("relu")]


def architecture() -> list[Layer]:
    """dlib's ``anet_type`` in forward order (input side first), loss layer excluded."""
    chain = [Layer("con", "conv1", (32, 3, 7, 7), 2), Layer("affine"), Layer("relu"),
             Layer("max_pool", shape=(3, 3), stride=2)]
    cin, index = 32, 0
    for stage, (cout, count) in enumerate(STAGES):
        for b in range(count):
            chain += _block_chain(f"blocks.{index}", cin, cout, down=stage > 0 and b == 0)
            cin, index = cout, index + 1
    return chain + [Layer("avg_pool", shape=(0, 0), stride=1), Layer("fc", "fc", (cin, 128))]


_DETAIL_TAGS = {"con": ("con_4", "con_5", "con_6"), "affine": ("affine_", "affine_2"), "relu": ("relu_", "relu_2"),
                "max_pool": ("max_pool_2",), "avg_pool": ("avg_pool_2",), "add_prev": ("add_prev_",),
                "fc": ("fc_2", "fc_3")}


def _read_details(r: _Reader, layer: Layer, where: str) -> None:
    """One layer's own parameters (its ``serialize(details)``), checked against ``layer``."""
    name = r.tag(_DETAIL_TAGS[layer.kind], where)
    if layer.kind == "con":
        params = r.tensor(where)
        filters = r.integer(where)
        kernel = (r.integer(where), r.integer(where))
        stride = (r.integer(where), r.integer(where))
        r.integer(where), r.integer(where)  # padding: dlib's default for the stride, checked by its own loader
        shape, bias_shape = r.alias(f"{where} filters"), r.alias(f"{where} biases")
        for _ in range(4):
            r.real(f"{where} learning-rate multipliers")
        if name in ("con_5", "con_6") and not r.boolean(f"{where} use_bias"):
            raise r.fail(f"{where}: a convolution without bias; dlib's face model has biases")
        if name == "con_6":
            r.boolean(f"{where} use_relu")
        if (filters, *kernel) != (layer.shape[0], *layer.shape[2:]) or shape != layer.shape or \
                stride != (layer.stride, layer.stride):
            raise r.fail(f"{where}: conv {shape} stride {stride}, dlib_resnet expects {layer.shape} stride "
                         f"{layer.stride}")
        weight_count = int(np.prod(shape))
        flat = params.reshape(-1)
        if flat.size != weight_count + bias_shape[1]:
            raise r.fail(f"{where}: {flat.size} parameters for filters {shape} and biases {bias_shape}")
        layer.params = {"weight": flat[:weight_count].reshape(shape), "bias": flat[weight_count:]}
    elif layer.kind == "affine":
        params = r.tensor(where).reshape(-1)
        gamma = r.alias(f"{where} gamma")
        r.alias(f"{where} beta")  # beta follows gamma in the same parameter tensor
        mode = r.integer(f"{where} mode")
        if name == "affine_2" and r.boolean(f"{where} disabled"):
            raise r.fail(f"{where}: a disabled affine layer")
        if mode != 0 or params.size != 2 * gamma[1]:  # CONV_MODE (0): one scale and shift per channel
            raise r.fail(f"{where}: affine mode {mode} with {params.size} parameters for {gamma[1]} channels")
        layer.params = {"gamma": params[:gamma[1]], "beta": params[gamma[1]:]}
    elif layer.kind == "relu":
        if name == "relu_2" and r.boolean(f"{where} disabled"):
            raise r.fail(f"{where}: a disabled relu layer")
    elif layer.kind in ("max_pool", "avg_pool"):
        kernel = (r.integer(where), r.integer(where))
        stride = (r.integer(where), r.integer(where))
        padding = (r.integer(where), r.integer(where))
        if kernel != layer.shape or stride != (layer.stride,) * 2 or padding != (0, 0):
            raise r.fail(f"{where}: {layer.kind} {kernel} stride {stride} padding {padding}, expected "
                         f"{layer.shape} stride {layer.stride} padding 0")
    elif layer.kind == "fc":
        outputs, inputs = r.integer(where), r.integer(where)
        params = r.tensor(where).reshape(-1)
        r.alias(f"{where} weights"), r.alias(f"{where} biases")
        bias_mode = r.integer(f"{where} bias mode")
        for _ in range(4):
            r.real(f"{where} learning-rate multipliers")
        if name == "fc_3":
            r.boolean(f"{where} use_bias")
        if bias_mode != 1 or (inputs, outputs) != layer.shape or params.size != inputs * outputs:
            raise r.fail(f"{where}: fc {inputs} -> {outputs} (bias mode {bias_mode}, {params.size} parameters), "
                         f"expected {layer.shape[0]} -> {layer.shape[1]} without bias")
        layer.params = {"weight": params.reshape(inputs, outputs)}


def _read_trailer(r: _Reader, where: str, version: int, input_layer: bool) -> None:
    """What every add_layer writes after its details: three flags and its cached tensors (unused)."""
    for _ in range(3):
        r.boolean(f"{where} flags")
    for _ in range(2):
        r.tensor(f"{where} cached")
    if version >= 2 or input_layer:
        r.tensor(f"{where} gradient")
    if input_layer and version >= 3:
        r.integer(f"{where} sample expansion factor")


def read_dat(path: str | os.PathLike) -> tuple[list[Layer], tuple[float, float, float]]:
    """The network's layers with their parameters, and the input layer's RGB means."""
    path = Path(path)
    if not path.is_file():
        raise DlibImportError(f"dlib model file not found: {path}")
    r = _Reader(path.read_bytes(), path)
    chain = architecture()
    r.version((1,), "the loss layer (add_loss_layer)")
    r.tag(("loss_metric_", "loss_metric_2"), "the loss layer")
    r.real("loss margin"), r.real("loss distance threshold")
    versions = []
    for index, layer in reversed(list(enumerate(chain[1:], 1))):  # outermost first
        expected = (1,) if layer.kind in ("tag", "skip") else (1, 2)
        versions.append((index, r.version(expected, f"layer {index} ({layer.kind})")))
    input_version = r.version((2, 3), "the input layer's add_layer")
    r.tag(("input_rgb_image_sized",), "the input layer")
    mean = (r.real("input mean"), r.real("input mean"), r.real("input mean"))
    side = (r.integer("input size"), r.integer("input size"))
    if side != (INPUT_SPEC.size, INPUT_SPEC.size):
        raise r.fail(f"input size {side}, dlib_resnet expects {INPUT_SPEC.size}x{INPUT_SPEC.size}")
    _read_details(r, chain[0], "layer 0 (con)")
    _read_trailer(r, "layer 0", input_version, input_layer=True)
    for index, version in reversed(versions):  # inner first: forward order
        layer = chain[index]
        if layer.kind not in ("tag", "skip"):
            _read_details(r, layer, f"layer {index} ({layer.kind})")
            _read_trailer(r, f"layer {index}", version, input_layer=False)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network; not dlib's ResNet-29 face model")
    return chain, mean


def convert_dat(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``dlib_resnet`` state_dict of the .dat, each affine folded into the conv before it."""
    chain, mean = read_dat(path)
    if any(abs(a - b) > 1e-3 for a, b in zip(mean, INPUT_SPEC.mean)):
        raise DlibImportError(f"{path}: input means {mean}, dlib_resnet's spec says {INPUT_SPEC.mean}")
    state: dict[str, torch.Tensor] = {}
    convs = [layer for layer in chain if layer.kind == "con"]
    affines = [layer for layer in chain if layer.kind == "affine"]
    for conv, affine in zip(convs, affines):  # every conv is followed by its affine
        gamma, beta = affine.params["gamma"].astype(np.float64), affine.params["beta"].astype(np.float64)
        weight = conv.params["weight"].astype(np.float64) * gamma[:, None, None, None]
        bias = conv.params["bias"].astype(np.float64) * gamma + beta
        state[f"{conv.name}.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"{conv.name}.bias"] = torch.from_numpy(bias.astype(np.float32))
    fc = chain[-1]
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc.params["weight"].T))
    load_state_strict(DlibResNet(), state, str(path))
    return state



def write_dlib_checkpoint(dat_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert ``dat_path`` and save it as a project checkpoint (meta: network, input spec, source)."""
    state = convert_dat(dat_path)
    return write_converted(out_path, state, NETWORK, state["fc.weight"].shape[0], dat_path, CONVERTER_VERSION)
