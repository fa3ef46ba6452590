"""int8 models: ONNX Runtime static QDQ quantization, calibrated on real inputs.

``edged models quantize NAME`` writes ``NAME_int8.onnx`` beside the model's file (same
sub-directory of the models directory; a shipped model's into ``--out``) and a sidecar
``NAME_int8.json`` saying what it was made from: source file and hash, calibration data
(its file or folder name only: the sidecar ships, the maker's paths do not), sample count,
method and the onnxruntime version. The catalogue knows every single-file model's int8
variant as ``NAME_int8`` (:func:`edged.models.catalog.int8_variant`), with the source's
labels, preprocessing and crops, so ``[pipeline] classifier = "edged_fer_int8"``
just works once the file is there.

Calibration uses **real** inputs pushed through the model's own preprocessing (the same
code the pipeline runs), because activation ranges from random tensors are not the ranges
the model meets: FER2013 train faces for emotion models, frames of ``../shared/images``
(whole, flipped, cropped and rescaled: a handful of real scenes at several face sizes) for
detectors. Static QDQ with per-channel int8 weights and uint8 activations is the format
ONNX Runtime's CPU kernels run fastest (VNNI/AVX2 integer GEMM/conv).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

from edged.config import PipelineSettings
from edged.errors import ModelError
from edged.models.catalog import CATALOG, ModelSpec, int8_name
from edged.models.classification import OnnxClassifier
from edged.models.loader import load_classifier, load_detector
from edged.models.providers import SessionFactory

log = structlog.get_logger(__name__)

Feed = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_model` wrote and from what (also the sidecar's content)."""

    name: str
    source: str
    source_sha256: str
    output: str
    output_sha256: str
    calibration: str
    samples: int
    method: str
    onnxruntime: str


def emotion_feeds(
    classifier: OnnxClassifier, input_name: str, fer_npz: Path, samples: int, batch: int = 32
) -> list[Feed]:
    """FER2013 train faces (stratified by class) through the classifier's preprocessing."""
    with np.load(fer_npz) as data:
        images, labels = data["images"], data["labels"]
    rng = np.random.default_rng(0)
    classes = np.unique(labels)
    per = max(samples // len(classes), 1)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes])
    rng.shuffle(idx)
    bgr = np.stack([cv2.cvtColor(images[i], cv2.COLOR_GRAY2BGR) for i in idx])
    return [
        {input_name: classifier.preprocess(bgr[i : i + batch])} for i in range(0, len(bgr), batch)
    ]


def scene_variants(images: Sequence[npt.NDArray[Any]]) -> Iterator[npt.NDArray[Any]]:
    """Each real frame whole, mirrored, its four quarters enlarged, and shrunk to half."""
    for img in images:
        h, w = img.shape[:2]
        yield img
        yield cv2.flip(img, 1)
        for y in (0, h // 2):
            for x in (0, w // 2):
                yield cv2.resize(img[y : y + h // 2, x : x + w // 2], (w, h))
        yield cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def detector_feeds(detector: Any, input_name: str, image_dir: Path) -> list[Feed]:
    """Frames of ``image_dir`` (and their variants) through the detector's preprocessing."""
    frames = [
        img
        for p in sorted(image_dir.iterdir())
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and (img := cv2.imread(str(p))) is not None
    ]
    if not frames:
        raise ModelError(f"no calibration images in {image_dir}")
    return [{input_name: detector.preprocess(f)[0]} for f in scene_variants(frames)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_path(spec: ModelSpec, models_dir: Path, out_dir: Path | None = None) -> Path:
    """Where ``NAME_int8.onnx`` goes: ``out_dir``, else the int8 entry's own location."""
    target = CATALOG[int8_name(spec.name)].paths(models_dir)[0]
    return out_dir / target.name if out_dir is not None else target


def quantize_model(
    name: str,
    models_dir: Path,
    *,
    fer_npz: Path,
    image_dir: Path,
    out_dir: Path | None = None,
    samples: int = 512,
    factory: SessionFactory | None = None,
) -> QuantizeResult:
    """Write ``NAME_int8.onnx`` and its sidecar; raise ModelError when it cannot."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    spec = CATALOG.get(name)
    if spec is None or int8_name(name) not in CATALOG:
        quantizable = sorted(n for n in CATALOG if int8_name(n) in CATALOG)
        raise ModelError(f"cannot quantize {name!r}; quantizable: {', '.join(quantizable)}")
    factory = factory or SessionFactory(providers=["cpu"])
    source = spec.paths(models_dir)[0]
    if not source.is_file():
        raise ModelError(f"{name}: {source} does not exist")
    probe = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    input_name = probe.get_inputs()[0].name
    if spec.kind == "emotion":
        classifier = load_classifier(spec, models_dir, factory)
        if not isinstance(classifier, OnnxClassifier):
            raise ModelError(f"{name}: not a single ONNX classifier")
        feeds, calibration = emotion_feeds(classifier, input_name, fer_npz, samples), fer_npz.name
    else:
        detector = load_detector(spec, models_dir, factory, PipelineSettings())
        feeds, calibration = detector_feeds(detector, input_name, image_dir), f"{image_dir.name}/"
    out = output_path(spec, models_dir, out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _pre_process(source, Path(tmp) / "prepared.onnx")
        try:
            quantize_static(
                str(prepared),
                str(out),
                _Reader(feeds),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # onnxruntime/onnx raise many unrelated types
            raise ModelError(f"quantizing {source} failed: {exc}") from exc
    n = sum(next(iter(f.values())).shape[0] for f in feeds)
    result = QuantizeResult(
        name=int8_name(name),
        source=spec.files[0],
        source_sha256=_sha256(source),
        output=out.name,
        output_sha256=_sha256(out),
        calibration=calibration,
        samples=n,
        method="static QDQ, per-channel int8 weights, uint8 activations, MinMax",
        onnxruntime=ort.__version__,
    )
    out.with_suffix(".json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    log.info("model_quantized", model=name, output=str(out), samples=n)
    return result


def _pre_process(source: Path, dest: Path) -> Path:
    """ORT's recommended pre-processing (shape inference, graph optimisation); as-is on failure."""
    try:
        import onnx
        from onnx import version_converter
    except ImportError as exc:  # a dev/train extra; the daemon itself never needs it
        raise ModelError("quantizing needs the onnx package: pip install onnx") from exc
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(source))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-channel DequantizeLinear (its ``axis``) needs opset 13
        upgraded = dest.with_name("opset13.onnx")
        try:
            onnx.save(version_converter.convert_version(model, 13), str(upgraded))
        except Exception as exc:
            raise ModelError(f"cannot convert {source} to opset 13 for int8: {exc}") from exc
        source = upgraded
    try:
        quant_pre_process(str(source), str(dest), skip_symbolic_shape=True)
    except Exception as exc:
        log.warning("quantize_preprocess_skipped", model=str(source), reason=str(exc)[:200])
        return source
    return dest
