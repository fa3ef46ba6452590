"""YuNet (libfacedetection / OpenCV zoo): one anchor per cell at strides 8/16/32.

Both the dynamic (N x 3 x H x W) and the fixed 1 x 3 x 640 x 640 exports, and the OpenCV
zoo's ``face_detection_yunet_2023mar.onnx``, have 12 outputs named ``cls_<s>``,
``obj_<s>``, ``bbox_<s>``, ``kps_<s>``; they are taken by name, as OpenCV does. The decode
is OpenCV's ``FaceDetectorYN::postProcess`` (modules/objdetect/src/face_detect.cpp):

- score = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))
- box center = ((col, row) + bbox[0:2]) * stride, size = exp(bbox[2:4]) * stride
- landmark k = ((col, row) + kps[2k:2k+2]) * stride

Input is the BGR image as float32 0..255 with no normalisation (``blobFromImage`` with its
defaults), padded bottom/right with zeros. YuNet's score is a geometric mean of two
probabilities and runs higher on non-faces than SCRFD's; OpenCV's samples use 0.9, so a
threshold shared with SCRFD (0.5) yields more false positives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edged.errors import ModelMismatchError
from edged.models.detection.base import FloatArray
from edged.models.detection.common import (
    STRIDES,
    Candidates,
    OnnxDetector,
    PerInputSize,
    candidates,
    grid_centers,
)

if TYPE_CHECKING:
    import onnxruntime as ort

_HEADS: dict[str, int] = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}


class YuNet(OnnxDetector):
    """YuNet face detector on one ONNX Runtime session; ``__call__`` is thread-safe."""

    family = "yunet"
    _blob_params = (1.0, 0.0, False)  # BGR 0..255, no normalisation

    def _select_outputs(self, declared: Sequence[ort.NodeArg]) -> list[str]:
        shapes = {o.name: list(o.shape) for o in declared}
        #: Output names in (cls, obj, bbox, kps) per stride order.
        names = [f"{head}_{s}" for s in STRIDES for head in _HEADS]
        missing = [n for n in names if n not in shapes]
        if missing:
            raise ModelMismatchError(
                f"{self._file}: expected 12 outputs cls/obj/bbox/kps_{{8,16,32}}, "
                f"missing {missing}; got {len(shapes)}: {shapes}"
            )
        return names

    def _setup(
        self, names: list[str], outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int
    ) -> list[str]:
        """Every output must be (1, cells, width-of-its-head) for the warm-up input size."""
        shapes = {n: list(o.shape) for n, o in zip(names, outs, strict=True)}
        for name, arr in zip(names, outs, strict=True):
            head, stride = name.split("_")
            cells = (in_w // int(stride)) * (in_h // int(stride))
            want = (1, cells, _HEADS[head])
            if arr.shape != want and arr.shape != want[1:]:
                raise ModelMismatchError(
                    f"{self._file}: output {name} should be {list(want)} for a {in_w}x{in_h} "
                    f"input, got {list(arr.shape)}; all outputs: {shapes}"
                )
        self._grids = PerInputSize(self._make_grids, in_w, in_h)
        return names

    @staticmethod
    def _make_grids(in_w: int, in_h: int) -> list[FloatArray]:
        return [grid_centers(in_w, in_h, s) for s in STRIDES]

    def _decode(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> Candidates:
        threshold = self.limits.threshold
        boxes, scores, kps = [], [], []
        for level, (stride, grid) in enumerate(
            zip(STRIDES, self._grids.get(in_w, in_h), strict=True)
        ):
            cls = np.clip(outs[4 * level].reshape(-1), 0.0, 1.0)
            obj = np.clip(outs[4 * level + 1].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls * obj)
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            g = grid[pos]
            reg = outs[4 * level + 2].reshape(-1, 4)[pos]
            center = (g + reg[:, :2]) * stride
            half = np.exp(reg[:, 2:]) * (stride / 2.0)
            boxes.append(np.concatenate([center - half, center + half], axis=1))
            kps.append((outs[4 * level + 3].reshape(-1, 5, 2)[pos] + g[:, None, :]) * stride)
            scores.append(score[pos])
        return candidates(boxes, scores, kps)
