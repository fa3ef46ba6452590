"""Static int8 quantization: the catalogue loads the result, it agrees with fp32 on real faces."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import PipelineSettings
from edged.errors import ModelError
from edged.models.catalog import CATALOG, ModelSpec
from edged.models.loader import load_classifier, load_detector
from edged.models.providers import SessionFactory
from edged.models.quantize import quantize_model
from tests.conftest import make_models_dir


@pytest.fixture(scope="module")
def factory() -> SessionFactory:
    return SessionFactory(providers=["cpu"], intra_op_threads=1)


@pytest.fixture(scope="module")
def quantized(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding edged_fer_int8 and scrfd_500m_int8, made by quantize_model."""
    mdir = make_models_dir(shared, tmp_path_factory.mktemp("models"))
    for name in ("edged_fer", "scrfd_500m"):
        quantize_model(
            name,
            mdir,
            # edged_fer_int8 ships in models/: the test's own goes beside the seed layout
            out_dir=mdir / "edged_fer" if name == "edged_fer" else None,
            fer_npz=shared / "datasets" / "fer2013_train.npz",
            image_dir=shared / "images",
            samples=128,
            factory=SessionFactory(providers=["cpu"]),
        )
    return mdir


def test_quantize_writes_the_int8_file_and_a_sidecar_naming_its_source(quantized: Path) -> None:
    out = quantized / "edged_fer" / "edged_fer_int8.onnx"
    assert out.name == "edged_fer_int8.onnx" and out.is_file()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["name"] == "edged_fer_int8"
    assert side["source"] == CATALOG["edged_fer"].files[0]
    assert side["samples"] >= 100
    assert "fer2013_train" in side["calibration"]
    assert out.stat().st_size < CATALOG["edged_fer"].paths(quantized)[0].stat().st_size / 2


def made_here(name: str) -> ModelSpec:
    """The catalogue entry of an int8 variant, pointed at the models dir instead of models/."""
    return replace(CATALOG[name], shipped=False)


def test_the_shipped_int8_model_loads_from_the_catalogue(factory: SessionFactory) -> None:
    spec = CATALOG["edged_fer_int8"]
    assert spec.shipped
    model = load_classifier(spec, Path("unused"), factory)
    assert model.labels == CATALOG["edged_fer"].canonical_labels


def test_int8_emotion_model_agrees_with_fp32_on_most_real_faces(
    quantized: Path, shared: Path, factory: SessionFactory
) -> None:
    fp32 = load_classifier(CATALOG["edged_fer"], quantized, factory)
    int8 = load_classifier(made_here("edged_fer_int8"), quantized, factory)
    assert int8.labels == fp32.labels
    with np.load(shared / "datasets" / "fer2013_test.npz") as data:
        faces = data["images"][:400]
    crops = np.stack([cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in faces])
    a, b = fp32(crops), int8(crops)
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    assert agree >= 0.85, f"top-1 agreement int8 vs fp32 {agree:.1%}"
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-3)


def test_int8_detector_finds_the_same_faces_as_fp32(
    quantized: Path, images: Path, factory: SessionFactory
) -> None:
    settings = PipelineSettings(max_faces=1024)
    fp32 = load_detector(CATALOG["scrfd_500m"], quantized, factory, settings)
    int8 = load_detector(CATALOG["scrfd_500m_int8"], quantized, factory, settings)
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    a, b = fp32(img), int8(img)
    assert len(a) == len(b) >= 2
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.08 * float(np.ptp(a.boxes[:, 0::2])))


def test_a_model_without_an_int8_variant_is_refused(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(ModelError, match="quantizable"):
        quantize_model(
            "efficientvit_m5",
            tmp_path,
            fer_npz=shared / "datasets" / "fer2013_train.npz",
            image_dir=shared / "images",
        )
