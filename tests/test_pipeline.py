"""The pipeline on real images: SCRFD-2.5G, the EfficientNet-B0 stand-in and a tiny FER model.

The crowd photo's >100 faces go through the classifier in one call, which the pipeline's own
stats count (no mocks); processing several frames at once must give exactly what processing
them one by one gives.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import PipelineSettings, Settings
from edged.models.catalog import CANONICAL_LABELS, CATALOG
from edged.models.classification import CLASSIFIERS, Classifier
from edged.models.detection import Detector
from edged.models.loader import load_classifier, load_detector
from edged.models.providers import SessionFactory
from edged.pipeline import Face, FrameResult, Pipeline, build_pipeline
from tests.tiny_models import make_fer_model


@pytest.fixture(scope="module")
def factory() -> SessionFactory:
    return SessionFactory(providers=["cpu"])


@pytest.fixture(scope="module")
def detector(models_dir: Path, factory: SessionFactory) -> Detector:
    return load_detector(
        CATALOG["scrfd_2.5g"], models_dir, factory, PipelineSettings(max_faces=1024)
    )


@pytest.fixture(scope="module")
def enet_b0(models_dir: Path, factory: SessionFactory) -> Classifier:
    return load_classifier(CATALOG["enet_b0_8"], models_dir, factory)


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory: pytest.TempPathFactory, factory: SessionFactory) -> Classifier:
    """edged_fer's I/O with random weights: cheap enough to classify a crowd in a test."""
    path = make_fer_model(tmp_path_factory.mktemp("fer") / "edged_fer_v1.onnx")
    session, provider = factory.create(path)
    return CLASSIFIERS["fer"](CATALOG["edged_fer"], [session], provider)


@pytest.fixture(scope="module")
def s_l(images: Path) -> np.ndarray:
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    return img


@pytest.fixture(scope="module")
def selfie(images: Path) -> np.ndarray:
    img = cv2.imread(str(images / "selfie.jpg"))
    assert img is not None
    return img


def assert_same_results(a: list[FrameResult], b: list[FrameResult]) -> None:
    assert [len(r.faces) for r in a] == [len(r.faces) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for fa, fb in zip(ra.faces, rb.faces, strict=True):
            np.testing.assert_allclose(fa.bbox, fb.bbox, atol=1e-4)
            assert fa.emotion == fb.emotion
            np.testing.assert_allclose(
                list(fa.scores.values()), list(fb.scores.values()), atol=1e-5
            )


def test_two_faces_in_s_l_each_with_an_emotion_and_scores(
    models_dir: Path, factory: SessionFactory, s_l: np.ndarray
) -> None:
    pipe = build_pipeline(
        Settings(), factory, detector="scrfd_2.5g", classifier="enet_b0_8", models_dir=models_dir
    )
    (result,) = pipe.process([s_l])
    assert len(result.faces) == 2
    labels = CATALOG["enet_b0_8"].canonical_labels
    for face in result.faces:
        assert face.emotion in labels
        assert list(face.scores) == list(labels)
        assert sum(face.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert face.confidence == max(face.scores.values())
        x1, y1, x2, y2 = face.bbox
        assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
        assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    assert pipe.models == {"detector": "scrfd_2.5g", "classifier": "enet_b0_8"}
    assert pipe.providers == {"scrfd_2.5g": "cpu", "enet_b0_8": "cpu"}
    assert set(result.timings) >= {"detect", "crop", "classify", "post"}


def test_face_json_is_the_contracts_shape(
    detector: Detector, enet_b0: Classifier, s_l: np.ndarray
) -> None:
    face = Pipeline(detector, enet_b0).process([s_l])[0].faces[0]
    data = face.to_json()
    assert set(data) == {"bbox", "score", "landmarks", "emotion", "confidence", "scores"}
    x1, y1, x2, y2 = face.bbox
    assert data["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.06)
    assert len(data["landmarks"]) == 5 and all(len(p) == 2 for p in data["landmarks"])
    assert set(data["scores"]) <= set(CANONICAL_LABELS)
    assert data["emotion"] in data["scores"] and isinstance(data["confidence"], float)


def test_crowd_is_classified_in_one_batched_call(
    detector: Detector, tiny_fer: Classifier, selfie: np.ndarray
) -> None:
    pipe = Pipeline(detector, tiny_fer, crop_mode="box", max_batch=1024)
    (result,) = pipe.process([selfie])
    assert len(result.faces) > 100
    assert all(f.emotion is not None for f in result.faces)
    stats = pipe.stats.snapshot()
    assert stats["classify_calls"] == 1
    assert stats["largest_batch"] == stats["classified_faces"] == len(result.faces)


def test_batches_above_max_batch_are_split_with_identical_results(
    detector: Detector, tiny_fer: Classifier, selfie: np.ndarray
) -> None:
    whole = Pipeline(detector, tiny_fer, max_batch=1024).process([selfie])
    split_pipe = Pipeline(detector, tiny_fer, max_batch=40)
    split = split_pipe.process([selfie])
    n = len(whole[0].faces)
    assert split_pipe.stats.snapshot()["classify_calls"] == -(-n // 40)
    assert_same_results(whole, split)


def test_several_frames_at_once_equal_one_by_one_in_one_classifier_call(
    detector: Detector, enet_b0: Classifier, s_l: np.ndarray
) -> None:
    frames = [s_l, np.zeros((240, 320, 3), np.uint8), cv2.flip(s_l, 1), s_l[:, :300].copy()]
    pipe = Pipeline(detector, enet_b0, crop_mode="align")
    together = pipe.process(frames)
    assert pipe.stats.snapshot()["classify_calls"] == 1
    alone = [pipe.process([f])[0] for f in frames]
    assert [len(r.faces) for r in together][:3] == [2, 0, 2]
    assert_same_results(together, alone)
    assert pipe.stats.snapshot()["frames"] == 2 * len(frames)


def test_frames_without_faces_never_call_the_classifier(
    detector: Detector, enet_b0: Classifier
) -> None:
    pipe = Pipeline(detector, enet_b0)
    results = pipe.process([np.zeros((200, 200, 3), np.uint8)] * 2)
    assert [r.faces for r in results] == [[], []]
    assert pipe.stats.snapshot()["classify_calls"] == 0


def test_detection_only_faces_have_no_emotion(detector: Detector, s_l: np.ndarray) -> None:
    pipe = Pipeline(detector, None)
    (result,) = pipe.process([s_l])
    assert len(result.faces) == 2
    for face in result.faces:
        data = face.to_json()
        assert data["emotion"] is None and data["confidence"] is None and data["scores"] == {}
    assert pipe.models == {"detector": "scrfd_2.5g", "classifier": None}
    assert pipe.providers == {"scrfd_2.5g": "cpu"}


def test_crops_follow_the_crop_mode_at_the_classifier_input_size(
    detector: Detector, enet_b0: Classifier, s_l: np.ndarray
) -> None:
    dets = [detector(s_l)]
    box = Pipeline(detector, enet_b0, crop_mode="box").crops([s_l], dets)
    align = Pipeline(detector, enet_b0, crop_mode="align").crops([s_l], dets)
    assert box.shape == align.shape == (2, 224, 224, 3)
    assert box.dtype == np.uint8
    assert not np.array_equal(box, align)


def test_build_pipeline_keeps_what_was_resolved(models_dir: Path, factory: SessionFactory) -> None:
    settings = Settings(pipeline=PipelineSettings(phase="sota_phase1", max_batch=8))
    pipe = build_pipeline(settings, factory, models_dir=models_dir, classifier="mobilenet_7")
    assert pipe.loaded is not None
    assert pipe.crop_mode == pipe.loaded.crop == "box"
    assert pipe.max_batch == 8
    # sota_phase1's first detector (scrfd_10g) is not in the fixture dir: the chain fell back.
    assert pipe.models["detector"] == "scrfd_2.5g"
    assert [fb.name for fb in pipe.loaded.fallbacks] == ["scrfd_10g"]


def test_face_xywh_matches_bbox() -> None:
    face = Face((10.0, 20.0, 50.0, 80.0), 0.9, np.zeros((5, 2), np.float32))
    assert face.xywh == (10.0, 20.0, 40.0, 60.0)
