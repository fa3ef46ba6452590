"""Emotion classifiers on the real stand-in architectures (and a tiny FER model).

Batched output must equal one-by-one output, because the pipeline classifies every face of
several frames in one call and a model that mixed samples in a batch (or a preprocessing
that depended on the batch) would silently change results with the crowd size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.models.catalog import CANONICAL_LABELS, CATALOG, ModelSpec
from edged.models.classification import CLASSIFIERS, OnnxClassifier, softmax
from edged.models.providers import SessionFactory
from tests.tiny_models import make_fer_model, make_pooled_rgb_model

#: name → files in ../shared/models that play it.
STANDINS: dict[str, tuple[str, ...]] = {
    "enet_b0_8": ("standin/enet_b0_8_best_vgaf.standin.onnx",),
    "enet_b2_7": ("standin/enet_b2_7.standin.onnx",),
    "mobilenet_7": ("standin/mobilenet_7.standin.onnx",),
    "efficientvit_m5": (
        "standin/efficientvit_m5_backbone.standin.onnx",
        "standin/efficientvit_m5_emotion_head.standin.onnx",
    ),
}


def build(spec: ModelSpec, paths: tuple[Path, ...]) -> OnnxClassifier:
    factory = SessionFactory(providers=["cpu"])
    sessions = [factory.create(p)[0] for p in paths]
    return CLASSIFIERS[spec.family](spec, sessions, "cpu")


@pytest.fixture(scope="module")
def fer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fer_model(tmp_path_factory.mktemp("fer") / "edged_fer_v1.onnx")


@pytest.fixture(scope="module", params=[*STANDINS, "edged_fer"])
def classifier(
    request: pytest.FixtureRequest, shared: Path, fer_file: Path
) -> Iterator[OnnxClassifier]:
    name = request.param
    spec = CATALOG[name]
    paths = (
        (fer_file,) if name == "edged_fer" else tuple(shared / "models" / f for f in STANDINS[name])
    )
    yield build(spec, paths)


@pytest.fixture(scope="module")
def face_crops(images: Path) -> list[np.ndarray]:
    """Five crops of different sizes cut from a real photo (faces and background)."""
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    boxes = [(60, 40, 180, 190), (200, 50, 330, 200), (0, 0, 100, 100), (150, 150, 400, 328)]
    crops = [img[y1:y2, x1:x2] for x1, y1, x2, y2 in boxes]
    crops.append(np.full((30, 50, 3), 200, np.uint8))
    return crops


def test_batched_classification_equals_one_by_one(
    classifier: OnnxClassifier, face_crops: list[np.ndarray]
) -> None:
    batched = classifier(face_crops)
    single = np.concatenate([classifier([c]) for c in face_crops])
    assert batched.shape == (len(face_crops), len(classifier.labels))
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_batched_logits_equal_one_by_one_far_below_the_gap_between_faces(
    classifier: OnnxClassifier, face_crops: list[np.ndarray]
) -> None:
    """The random-weight stand-ins barely separate inputs (logits ~1e-4 apart), so the
    probability check above alone could not catch a batch that mixed up faces: compare
    logits, with a tolerance a thousand times smaller than the closest two faces' gap."""
    x = classifier.preprocess(face_crops)
    batched = classifier.run_raw(x)
    single = np.concatenate([classifier.run_raw(x[i : i + 1]) for i in range(len(x))])
    gaps = np.abs(batched[:, None] - batched[None]).max(axis=2)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() > 0
    assert np.abs(batched - single).max() <= 1e-3 * gaps.min()


def test_probabilities_are_a_distribution_per_face(
    classifier: OnnxClassifier, face_crops: list[np.ndarray]
) -> None:
    probs = classifier(face_crops)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_labels_are_canonical_and_seven_class_models_never_say_contemptuous(
    classifier: OnnxClassifier,
) -> None:
    labels = classifier.labels
    assert set(labels) <= set(CANONICAL_LABELS)
    assert len(set(labels)) == len(labels) == classifier.spec.outputs[-1][0][1]
    if len(labels) == 7:
        assert "contemptuous" not in labels
    else:
        assert labels[1] == "contemptuous"  # HSEmotion 8-class order: Anger, Contempt, ...


def test_presized_array_equals_list_of_crops_of_any_size(
    classifier: OnnxClassifier, face_crops: list[np.ndarray]
) -> None:
    s = classifier.input_size
    if classifier.spec.family == "fer":
        # Gray first, then INTER_AREA (the training tool's order); gray→BGR→gray is exact.
        resized = np.stack(
            [
                cv2.cvtColor(
                    cv2.resize(
                        cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (s, s), interpolation=cv2.INTER_AREA
                    ),
                    cv2.COLOR_GRAY2BGR,
                )
                for c in face_crops
            ]
        )
    else:
        resized = np.stack(
            [
                cv2.resize(
                    c,
                    (s, s),
                    interpolation=cv2.INTER_AREA if max(c.shape[:2]) > s else cv2.INTER_LINEAR,
                )
                for c in face_crops
            ]
        )
    presized = np.asarray(resized, np.uint8)
    np.testing.assert_allclose(classifier(presized), classifier(face_crops), atol=1e-6)


def test_fer_preprocessing_is_the_training_tools(
    fer_file: Path, face_crops: list[np.ndarray]
) -> None:
    from edged_train import data as train  # what tools/train_emotion.py trains with

    fer = build(CATALOG["edged_fer"], (fer_file,))
    expected = np.stack([train.preprocess_bgr(c) for c in face_crops]).astype(np.float32)
    expected = (expected / 255.0 - train.MEAN) / train.STD
    got = fer.preprocess(face_crops)
    assert got.shape == (len(face_crops), 1, 48, 48)
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-6)


def test_color_preprocessing_is_rgb_over_255_with_imagenet_mean_and_std(
    classifier: OnnxClassifier,
) -> None:
    if classifier.spec.family == "fer":
        pytest.skip("gray model: covered by the FER preprocessing test")
    s = classifier.input_size
    crops = np.random.default_rng(1).integers(0, 256, (3, s, s, 3), dtype=np.uint8)
    rgb = crops[..., ::-1].astype(np.float64) / 255.0
    ref = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    got = classifier.preprocess(crops)
    assert got.shape == (3, 3, s, s) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref.transpose(0, 3, 1, 2), atol=1e-5)


def test_empty_batch_gives_zero_rows(classifier: OnnxClassifier) -> None:
    out = classifier([])
    assert out.shape == (0, len(classifier.labels))


def test_softmax_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [3.0, 3.0, 3.0]], np.float32)
    p = softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, atol=1e-6)


def test_fixed_batch_of_one_model_loops_logs_once_and_equals_batched(
    tmp_path: Path, face_crops: list[np.ndarray]
) -> None:
    spec = CATALOG["enet_b0_8"]
    fixed = make_pooled_rgb_model(tmp_path / "fixed.onnx", 224, 8, batch=1)
    dynamic = make_pooled_rgb_model(tmp_path / "dyn.onnx", 224, 8, batch="batch")
    with capture_logs() as logs:
        looped = build(spec, (fixed,))
        looped(face_crops)
        looped(face_crops)
    assert looped.fixed_batch_one
    assert [e["event"] for e in logs].count("classifier_fixed_batch") == 1
    batched = build(spec, (dynamic,))
    assert not batched.fixed_batch_one
    np.testing.assert_allclose(looped(face_crops), batched(face_crops), atol=1e-5)


def test_softmax_in_graph_spec_passes_probabilities_through(tmp_path: Path) -> None:
    path = make_pooled_rgb_model(tmp_path / "m.onnx", 224, 8)
    plain = build(CATALOG["enet_b0_8"], (path,))
    in_graph = build(replace(CATALOG["enet_b0_8"], extra={"softmax_in_graph": True}), (path,))
    crops = np.random.default_rng(2).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    raw = in_graph(crops)
    np.testing.assert_allclose(raw, plain.run_raw(plain.preprocess(crops)), atol=1e-6)
    np.testing.assert_allclose(plain(crops), softmax(raw), atol=1e-6)
