"""What every emotion classifier shares: crop normalisation, batching, softmax.

A classifier is built from its :class:`~edged.models.catalog.ModelSpec` and one ONNX Runtime
session per model file. The preprocessing constants are fixed once in ``__init__`` as
float32 arrays, so a call does two vectorised passes over the batch (scale, shift) and one
``session.run`` per model file, whatever the number of faces: the pipeline relies on that
to classify every face of several frames in one call.

A model exported with a fixed batch of 1 still works: the call loops over the faces (and
says so once in the log), because refusing such a file would only push operators towards
re-exporting models they did not train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

from edged.errors import ModelError
from edged.models.catalog import ModelSpec
from edged.models.detection.common import ort_errors

log = structlog.get_logger(__name__)

FloatArray = npt.NDArray[np.float32]
Crops = Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8]


@runtime_checkable
class Classifier(Protocol):
    """What the pipeline needs from an emotion classifier."""

    name: str
    provider: str
    spec: ModelSpec
    input_size: int
    labels: tuple[str, ...]

    def __call__(self, crops: Crops) -> FloatArray: ...


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits (the row maximum is subtracted first)."""
    z = logits.astype(np.float32, copy=True)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def resize_crops(
    crops: Crops, size: int, interpolation: int | None = None
) -> npt.NDArray[np.uint8]:
    """Stack crops into one (N, size, size, C) uint8 array, resizing only those that need it.

    The pipeline already crops at the classifier's input size, so the common case is a
    single array passed through untouched (no copy). Shrinking uses INTER_AREA (no
    aliasing), enlarging INTER_LINEAR, unless ``interpolation`` is given.
    """
    if isinstance(crops, np.ndarray):
        if crops.ndim != 4:
            raise ValueError(f"crops must be (N, H, W, C), got shape {crops.shape}")
        if crops.shape[1] == size and crops.shape[2] == size:
            return np.ascontiguousarray(crops, dtype=np.uint8)
        items: Sequence[npt.NDArray[np.uint8]] = list(crops)
    else:
        items = crops
    if not items:
        channels = 3
        return np.zeros((0, size, size, channels), np.uint8)
    out: list[npt.NDArray[np.uint8]] = []
    for crop in items:
        h, w = crop.shape[:2]
        if (h, w) == (size, size):
            out.append(crop)
            continue
        interp = interpolation
        if interp is None:
            interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
        out.append(np.asarray(cv2.resize(crop, (size, size), interpolation=interp), np.uint8))
    return np.stack(out).astype(np.uint8, copy=False)


def _fixed_side(session: ort.InferenceSession) -> int | None:
    """The square input side a file fixes (``[N, C, S, S]``), None when it is dynamic.

    A spec may leave the side open (EfficientViT-M5: the seed's 224, or the smaller size a
    CPU-trained export was made at); the file then says what it was trained at.
    """
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3] and shape[2] > 0:
        return int(shape[2])
    return None


class OnnxClassifier:
    """Base of the ONNX classifiers: subclasses implement :meth:`preprocess`.

    ``sessions`` are in the order of ``spec.files``; the output of each feeds the next
    (one file for HSEmotion and FER, backbone → head for EfficientViT).
    """

    def __init__(
        self, spec: ModelSpec, sessions: Sequence[ort.InferenceSession], provider: str
    ) -> None:
        if len(sessions) != len(spec.files):
            raise ModelError(
                f"{spec.name}: expected {len(spec.files)} session(s) for {spec.files}, "
                f"got {len(sessions)}"
            )
        self.name = spec.name
        self.provider = provider
        self.spec = spec
        side = _fixed_side(sessions[0]) if sessions else None
        self.input_size: int = side if side is not None else spec.input_size
        self.labels: tuple[str, ...] = spec.canonical_labels
        self._sessions = list(sessions)
        self._input_names = [s.get_inputs()[0].name for s in self._sessions]
        self._output_names = [s.get_outputs()[0].name for s in self._sessions]
        #: True when a file only accepts a batch of exactly one face.
        self.fixed_batch_one = any(
            bool(s.get_inputs()[0].shape) and s.get_inputs()[0].shape[0] == 1
            for s in self._sessions
        )
        self._softmax_in_graph = bool(spec.extra.get("softmax_in_graph", False))
        if self.fixed_batch_one:
            log.warning(
                "classifier_fixed_batch",
                model=self.name,
                detail="the model file has a fixed batch of 1; faces are classified one by one",
            )
        self._warm_up()

    # -- to implement ---------------------------------------------------------------
    def preprocess(self, crops: Crops) -> FloatArray:
        """BGR uint8 crops → the model's NCHW float32 input tensor."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def _warm_up(self) -> None:
        """One run at load so the first frame does not pay for allocations and kernels."""
        # Preprocessing is edged's own code: its errors are bugs and propagate as such.
        tensor = self.preprocess(np.zeros((1, self.input_size, self.input_size, 3), np.uint8))
        try:
            self.run_raw(tensor)
        except ort_errors() as exc:  # the file cannot run what it declares
            raise ModelError(f"{self.name}: warm-up inference failed: {exc}") from exc

    def run_raw(self, tensor: FloatArray) -> FloatArray:
        """The model(s) on a ready input tensor: logits (or probabilities), no softmax.

        Public so the benchmark can time exactly the ``session.run`` part.
        """
        if self.fixed_batch_one and tensor.shape[0] != 1:
            if tensor.shape[0] == 0:
                return np.zeros((0, len(self.labels)), np.float32)
            return np.concatenate([self.run_raw(tensor[i : i + 1]) for i in range(tensor.shape[0])])
        x: Any = tensor
        for sess, iname, oname in zip(
            self._sessions, self._input_names, self._output_names, strict=True
        ):
            x = sess.run([oname], {iname: x})[0]
        return np.asarray(x, dtype=np.float32)

    def __call__(self, crops: Crops) -> FloatArray:
        """Probabilities (N, C) in the order of :attr:`labels`; rows sum to 1."""
        n = len(crops)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        tensor = self.preprocess(crops)
        try:
            out = self.run_raw(tensor)
        except ort_errors() as exc:  # a provider failing mid-run (CUDA fault, out of memory)
            text = str(exc).strip().splitlines()
            short = text[0][:300] if text else type(exc).__name__
            raise ModelError(f"{self.name}: inference failed: {short}") from exc
        if out.shape != (n, len(self.labels)):
            raise ModelError(
                f"{self.name}: output shape {out.shape} does not match ({n}, {len(self.labels)})"
            )
        if self._softmax_in_graph:
            return out
        return softmax(out)

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        return list(self._sessions)


class NormalizedRgbClassifier(OnnxClassifier):
    """Colour models: resize to S×S, BGR→RGB, x/255, (x-mean)/std, NCHW.

    The two affine steps are folded into one multiply and one add per element with
    per-channel constants computed once here.
    """

    def __init__(
        self, spec: ModelSpec, sessions: Sequence[ort.InferenceSession], provider: str
    ) -> None:
        mean = np.asarray(spec.mean or (0.0, 0.0, 0.0), np.float32)
        std = np.asarray(spec.std or (1.0, 1.0, 1.0), np.float32)
        #: (x/255 - mean)/std == x * scale + shift, per channel in model (RGB) order.
        self._scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
        self._shift = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
        self._swap_rb = spec.color == "rgb"
        super().__init__(spec, sessions, provider)

    def preprocess(self, crops: Crops) -> FloatArray:
        batch = resize_crops(crops, self.input_size)
        nchw = batch.transpose(0, 3, 1, 2)
        if self._swap_rb:
            nchw = nchw[:, ::-1]
        out = np.empty(nchw.shape, np.float32)
        np.multiply(nchw, self._scale, out=out)
        out += self._shift
        return out
