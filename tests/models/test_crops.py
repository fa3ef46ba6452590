"""Faces are cut the way each classifier's training faces were: square, aspect kept, framed
by the model's own CropSpec, and by the same function the training tool uses.

Real detectors and models from ../shared, real photos from its facial_expressions set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import PipelineSettings
from edged.models.catalog import CATALOG, FER2013_UNIT, CropSpec
from edged.models.classification import Classifier
from edged.models.crops import crop_transforms, face_crops
from edged.models.detection import Detector
from edged.models.loader import load_classifier, load_detector
from edged.models.providers import SessionFactory
from edged.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import fer_crops  # noqa: E402  (the training-crop tool: it must cut faces like the daemon)
from emotion_data import half_of, load_photos, part_of, person_of  # noqa: E402

from edged_train.data import labelled_files  # noqa: E402


@pytest.fixture(scope="module")
def factory() -> SessionFactory:
    return SessionFactory(providers=["cpu"])


@pytest.fixture(scope="module")
def yunet(models_dir: Path, factory: SessionFactory) -> Detector:
    return load_detector(CATALOG["yunet"], models_dir, factory, PipelineSettings())


@pytest.fixture(scope="module")
def classifiers(models_dir: Path, factory: SessionFactory) -> dict[str, Classifier]:
    """One classifier of every family (stand-in weights are enough for the geometry)."""
    return {
        name: load_classifier(CATALOG[name], models_dir, factory)
        for name in ("enet_b0_8", "efficientvit_m5", "edged_fer")
    }


@pytest.fixture(scope="module")
def s_l(images: Path) -> np.ndarray:
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    return img


def _disc(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A frame with a white disc inscribed in the *height* of a non-square box."""
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    r = (y2 - y1) // 2
    cv2.circle(frame, ((x1 + x2) // 2, (y1 + y2) // 2), r, (255, 255, 255), -1)
    return frame


@pytest.mark.parametrize("mode", ["box", "align"])
def test_crops_are_square_and_keep_the_face_aspect(mode: str) -> None:
    """A disc in a box twice as tall as wide must stay a disc (a stretched crop would make
    it an ellipse twice as wide as tall)."""
    box = (300, 100, 400, 300)  # 100 x 200
    frame = _disc(480, 640, box)
    cx, cy = 350.0, 200.0
    lmk = np.array(  # a similarity-consistent 5-point face around the disc
        [[cx - 30, cy - 30], [cx + 30, cy - 30], [cx, cy], [cx - 25, cy + 40], [cx + 25, cy + 40]],
        np.float32,
    )
    spec = CropSpec(mode, 1.2)
    crop = face_crops(frame, np.array([box], np.float32), lmk[None], 64, spec)[0]
    assert crop.shape == (64, 64, 3)
    ys, xs = np.nonzero(crop[:, :, 0] > 127)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width - height) <= 2, (width, height)
    m = crop_transforms(spec, np.array([box], np.float32), lmk[None], 64)[0]
    assert np.isclose(abs(m[0, 0]), abs(m[1, 1]), rtol=1e-5) or mode == "align"
    sx, sy = np.hypot(*m[:, 0]), np.hypot(*m[:, 1])
    assert np.isclose(sx, sy, rtol=1e-5)  # one scale on both axes: aspect kept


def test_a_face_at_the_frame_edge_is_filled_with_its_edge_not_black() -> None:
    frame = np.full((200, 200, 3), 180, np.uint8)
    crop = face_crops(
        frame,
        np.array([[-60, 20, 60, 140]], np.float32),
        np.zeros((1, 5, 2)),
        48,
        CropSpec("box", 1.0),
    )[0]
    assert crop.min() == 180  # replicated, no black band


def test_a_large_face_is_shrunk_without_aliasing() -> None:
    """A fine stripe pattern shrunk 8x averages to mid-grey like INTER_AREA would; plain
    bilinear sampling would pick stripes and give a high-contrast moire."""
    frame = np.zeros((512, 512, 3), np.uint8)
    frame[:, ::2] = 255
    crop = face_crops(
        frame,
        np.array([[64, 64, 448, 448]], np.float32),
        np.zeros((1, 5, 2)),
        48,
        CropSpec("box", 1.0),
    )[0]
    assert 100 < crop.mean() < 155 and crop.std() < 20


@pytest.mark.parametrize("name", ["enet_b0_8", "efficientvit_m5", "edged_fer"])
@pytest.mark.parametrize("mode", ["model", "box", "align"])
def test_pipeline_crop_is_the_models_own_crop_function(
    classifiers: dict[str, Classifier], yunet: Detector, s_l: np.ndarray, name: str, mode: str
) -> None:
    clf = classifiers[name]
    pipe = Pipeline(yunet, clf, crop_mode=mode)  # type: ignore[arg-type]
    det = yunet(s_l)
    assert len(det) == 2
    spec = CATALOG[name].crop_for(mode)  # type: ignore[arg-type]
    assert pipe.crop == spec
    got = pipe.crops([s_l], [det])
    want = face_crops(s_l, det.boxes, det.landmarks, clf.input_size, spec)
    assert got.shape == (2, clf.input_size, clf.input_size, 3)
    np.testing.assert_array_equal(got, want)


def test_every_emotion_model_has_a_square_crop_of_each_mode() -> None:
    for spec in CATALOG.values():
        if spec.kind != "emotion":
            continue
        assert spec.crops, spec.name
        for mode in ("box", "align"):
            assert spec.crop_for(mode).mode in ("box", "align")


def test_crop_margin_grows_the_models_window() -> None:
    base = CATALOG["edged_fer"].crops[0]
    assert base.zoomed(1.2).scale == pytest.approx(base.scale * 1.2)
    assert CropSpec.from_json(base.to_json()) == base


def test_training_crops_are_cut_by_the_daemons_crop_function(yunet: Detector) -> None:
    """tools/fer_crops.py on a FER2013 image equals face_crops on its enlarged image with
    the same detection: the training data and the daemon share one code path."""
    from tests.conftest import shared_root

    with np.load(shared_root() / "datasets" / "fer2013_test.npz") as d:
        gray = d["images"][7]
    big = fer_crops.enlarge(gray)
    name, box, pts = fer_crops.detect([("yunet", yunet)], big)
    assert name == "yunet"
    spec = CATALOG["edged_fer"].crops[0]
    pipe = Pipeline(yunet, None)
    dets = yunet(big)
    i = int(np.argmin(np.abs(dets.boxes - box).sum(1)))
    daemon = face_crops(big, dets.boxes[i : i + 1], dets.landmarks[i : i + 1], 48, spec)
    tool = face_crops(big, box[None], pts[None], 48, spec)
    np.testing.assert_array_equal(daemon, tool)
    assert pipe.crop is None  # detection only: no classifier, no crop


def test_fer_template_is_where_fer2013_puts_its_faces() -> None:
    eyes = np.array(FER2013_UNIT[:2])
    assert np.all((eyes[:, 1] > 0.3) & (eyes[:, 1] < 0.45))  # eyes a bit above centre
    assert FER2013_UNIT[0][0] < 0.5 < FER2013_UNIT[1][0]


def test_photo_halves_split_by_person_never_by_file() -> None:
    assert person_of("George_W_Bush_0012.jpg") == "George_W_Bush"
    assert person_of("Dwarakish_148.jpg") == "Dwarakish"
    assert half_of("George_W_Bush_0012.jpg") == half_of("George_W_Bush_0001.jpg")
    select, report = load_photos(half="select"), load_photos(half="report")
    assert len(select) + len(report) == len(load_photos())
    assert not {p.person for p in select} & {p.person for p in report}
    assert 0.35 < len(select) / (len(select) + len(report)) < 0.65


def test_selection_half_parts_split_by_person_and_make_up_the_selection_half() -> None:
    """A model trained on ``select-fit`` photos is chosen on ``select-check``: no person in
    both, nothing of the report half in either."""
    fit, check = load_photos(half="select-fit"), load_photos(half="select-check")
    select = load_photos(half="select")
    assert sorted(p.path for p in fit + check) == sorted(p.path for p in select)
    assert not {p.person for p in fit} & {p.person for p in check}
    assert all(part_of(p.path.name) == "select-check" for p in check)
    assert 0.2 < len(check) / len(select) < 0.5


def test_sidecar_face_crop_matches_the_catalogue_for_models_trained_on_detector_crops() -> None:
    for spec in CATALOG.values():
        if not (spec.shipped and spec.family == "fer"):
            continue
        side = (REPO / "models" / spec.files[0]).with_suffix(".json")
        if not side.is_file():
            side = side.with_name(side.name.replace("_fast.json", ".json"))
        face_crop = json.loads(side.read_text()).get("face_crop")
        if face_crop is not None:
            assert CropSpec.from_json(face_crop) == spec.crops[0], spec.name


def test_photo_training_crops_are_the_daemons_crop_of_the_largest_face(
    yunet: Detector, tmp_path: Path
) -> None:
    """tools/fer_crops.py --image-folder (and --photos) cut a full photo's largest face with
    the daemon's crop function and gray conversion: what a fine-tuned model learns from is
    what the daemon will hand it."""
    from edged.models.classification.fer import gray_input

    photos = [p for p in load_photos(half="select-check") if p.label in ("happy", "sad")][:4]
    for p in photos:
        (tmp_path / "frames" / p.label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "frames" / p.label / p.path.name).write_bytes(p.path.read_bytes())
    spec = CATALOG["edged_fer"].crops[0]
    items = labelled_files(tmp_path / "frames")
    assert sorted(lab for _, lab in items) == sorted(p.label for p in photos)
    out = tmp_path / "crops.npz"
    assert fer_crops.photo_crops("test", items, [("yunet", yunet)], spec, out) == 0
    with np.load(out) as d:
        assert json.loads(str(d["crop"])) == spec.to_json()
        assert len(d["images"]) == len(items)  # every one of these photos has a face
        for (path, label), crop, y in zip(items, d["images"], d["labels"], strict=True):
            img = cv2.imread(str(path))
            dets = yunet(img)
            i = int(
                np.argmax(
                    (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
                )
            )
            daemon = face_crops(img, dets.boxes[i : i + 1], dets.landmarks[i : i + 1], 48, spec)
            np.testing.assert_array_equal(crop, gray_input(daemon[0], 48))
            assert CATALOG["edged_fer"].canonical_labels[int(y)] == label
