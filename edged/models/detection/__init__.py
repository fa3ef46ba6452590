"""Face detection: one file per model family, an explicit registry, one result type.

Every detector is built from its :class:`~edged.models.catalog.ModelSpec` and an ONNX Runtime
session, and is called on one BGR ``uint8`` image; it returns :class:`Detections` in the
pixel coordinates of that image, whatever letterboxing it did inside.
"""

from __future__ import annotations

from edged.models.detection.base import Detections, Detector, FloatArray
from edged.models.detection.centerface import CenterFace
from edged.models.detection.common import OnnxDetector
from edged.models.detection.retinaface import RetinaFace
from edged.models.detection.scrfd import SCRFD
from edged.models.detection.yunet import YuNet

#: Detector class per ``ModelSpec.family``; every class takes
#: ``(spec, session, provider, *, det_size, max_upscale, threshold, nms_threshold,
#: min_face_px, max_faces)``.
DETECTORS: dict[str, type[OnnxDetector]] = {
    "scrfd": SCRFD,
    "yunet": YuNet,
    "retinaface": RetinaFace,
    "centerface": CenterFace,
}

__all__ = [
    "DETECTORS",
    "SCRFD",
    "CenterFace",
    "Detections",
    "Detector",
    "FloatArray",
    "RetinaFace",
    "YuNet",
]
