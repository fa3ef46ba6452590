"""SCRFD (InsightFace): anchor-free "distance" heads at strides 8/16/32, 2 anchors per cell.

Every ``*_kps`` / ``*_bnkps`` export (0.5G, 2.5G, 10G = buffalo's ``det_10g``) has 9 outputs:
scores (rows x 1, sigmoid already applied), box distances (rows x 4: left, top, right,
bottom) and landmark offsets (rows x 10) for each stride, ``rows = (H/s) * (W/s) * 2``.
Output *names* differ between exports (``out0``..``out8``, ``score_8``, ``448``...) and so
does their order, so the outputs are told apart by shape alone: the last dimension says
which head, the row count says which stride. Decoding follows InsightFace's
``model_zoo/scrfd.py``: ``box = center -/+ distance * stride``,
``landmark = center + offset * stride``, centers at ``(col, row) * stride``.
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
    output_names,
)

if TYPE_CHECKING:
    import onnxruntime as ort

#: The 9 outputs of every SCRFD export and of InsightFace's ONNX RetinaFace.
DISTANCE_OUTPUTS = "scores/boxes/kps × strides 8,16,32"


class DistanceHead:
    """The output layout and decode shared by SCRFD and InsightFace's ONNX RetinaFace.

    Built from the warm-up outputs (whose shapes are concrete even when the export declares
    symbolic ones) for the canonical input size; decodes one run's outputs into candidate
    boxes/scores/landmarks in network-input pixels. Anchor centers for the canonical size are
    computed here; other sizes (dynamic exports, non-square frames) are cached on first use.
    """

    def __init__(
        self,
        file: str,
        names: list[str],
        outs: list[npt.NDArray[np.float32]],
        in_w: int,
        in_h: int,
    ) -> None:
        shapes = [(n, list(o.shape)) for n, o in zip(names, outs, strict=True)]
        expected = f"9 outputs ({DISTANCE_OUTPUTS})"
        groups: dict[int, list[tuple[int, str]]] = {1: [], 4: [], 10: []}
        for name, arr in zip(names, outs, strict=True):
            batched_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[0] == 1)
            if not batched_ok or arr.shape[-1] not in groups:
                raise ModelMismatchError(f"{file}: expected {expected}, got {shapes}")
            groups[arr.shape[-1]].append((int(arr.shape[-2]), name))
        if any(len(g) != len(STRIDES) for g in groups.values()):
            raise ModelMismatchError(f"{file}: expected {expected}, got {shapes}")
        for g in groups.values():
            g.sort(reverse=True)  # most rows = finest stride
        self.anchors = 0
        order: list[str] = []
        for level, stride in enumerate(STRIDES):
            rows = {groups[c][level][0] for c in groups}
            cells = (in_w // stride) * (in_h // stride)
            n = rows.pop() if len(rows) == 1 else -1
            if n <= 0 or n % cells or (self.anchors and n // cells != self.anchors):
                raise ModelMismatchError(
                    f"{file}: outputs do not form a {in_w}x{in_h} pyramid at strides "
                    f"{STRIDES} (stride {stride} has {cells} cells): {shapes}"
                )
            self.anchors = n // cells
            order += [groups[c][level][1] for c in (1, 4, 10)]
        #: Output names to request, in (scores, boxes, kps) per stride order.
        self.names = order
        self.centers = PerInputSize(self._make_centers, in_w, in_h)

    def _make_centers(self, in_w: int, in_h: int) -> list[FloatArray]:
        return [np.repeat(grid_centers(in_w, in_h, s) * s, self.anchors, axis=0) for s in STRIDES]

    def decode(
        self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int, threshold: float
    ) -> Candidates:
        """Candidates above ``threshold``: boxes (N, 4), scores (N,), landmarks (N, 5, 2)."""
        boxes, scores, kps = [], [], []
        for level, (stride, centers) in enumerate(
            zip(STRIDES, self.centers.get(in_w, in_h), strict=True)
        ):
            score = outs[3 * level].reshape(-1)
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            c = centers[pos]
            dist = outs[3 * level + 1].reshape(-1, 4)[pos] * stride
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
            kps.append(outs[3 * level + 2].reshape(-1, 5, 2)[pos] * stride + c[:, None, :])
            scores.append(score[pos])
        return candidates(boxes, scores, kps)


class SCRFD(OnnxDetector):
    """SCRFD face detector on one ONNX Runtime session; ``__call__`` is thread-safe.

    Preprocessing (InsightFace's): letterbox into the model input (fixed exports) or to
    ``det_size`` on the longer side padded to a multiple of 32 (dynamic exports), RGB,
    ``(x - 127.5) / 128``, NCHW float32.
    """

    family = "scrfd"
    _blob_params = (1.0 / 128.0, 127.5, True)

    def _select_outputs(self, declared: Sequence[ort.NodeArg]) -> list[str]:
        return output_names(self._file, declared, 9, DISTANCE_OUTPUTS)

    def _setup(
        self, names: list[str], outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int
    ) -> list[str]:
        self._head = DistanceHead(self._file, names, outs, in_w, in_h)
        return self._head.names

    def _decode(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> Candidates:
        return self._head.decode(outs, in_w, in_h, self.limits.threshold)
