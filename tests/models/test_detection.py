"""Detectors on the real models and images in ../shared: what they find, where they put it.

Every detector is built the way the loader builds it (``DETECTORS[spec.family](spec,
session, provider, ...)``) on CPU sessions from :class:`SessionFactory`; sessions are
session-scoped because building them is the slow part.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.errors import ModelMismatchError
from edged.models.catalog import CATALOG, ModelSpec
from edged.models.detection import DETECTORS, SCRFD, CenterFace, Detections, RetinaFace, YuNet
from edged.models.providers import SessionFactory

#: Test key → (catalogue name, file under models_dir, or under ../shared for the fixed YuNet).
MODELS: dict[str, tuple[str, str]] = {
    "scrfd_2.5g": ("scrfd_2.5g", "scrfd/scrfd_2.5g_bnkps.onnx"),
    "scrfd_500m": ("scrfd_500m", "scrfd/scrfd_500m_bnkps.onnx"),
    "yunet": ("yunet", "yunet/face_detection_yunet_2023mar.onnx"),
    "yunet_640": ("yunet", "shared:models/real/yunet_s_640_640.onnx"),
}
ALL = list(MODELS)

#: The two faces of s_l.jpg (x1, y1, x2, y2), read off an annotated SCRFD-2.5G run and
#: checked by eye; all four detectors agree with them to IoU > 0.85.
S_L_FACES = np.array([[139, 79, 210, 170], [260, 54, 343, 164]], np.float32)

#: The crowd thresholds. SCRFD: InsightFace's default 0.5. YuNet's score is
#: sqrt(cls * obj) and runs higher on non-faces (OpenCV's samples use 0.9, which misses
#: most of this crowd); at 0.6 over 90 % of its boxes coincide with SCRFD's (pinned below).
CROWD_THRESHOLD = {"scrfd_2.5g": 0.5, "yunet": 0.6}

Factory = Callable[..., Any]


@pytest.fixture(scope="session")
def model_paths(models_dir: Path, shared: Path) -> dict[str, Path]:
    return {
        key: shared / rel[len("shared:") :] if rel.startswith("shared:") else models_dir / rel
        for key, (_, rel) in MODELS.items()
    }


@pytest.fixture(scope="session")
def session_for(model_paths: dict[str, Path]) -> Callable[[str], tuple[ort.InferenceSession, str]]:
    factory = SessionFactory(providers=["cpu"])
    cache: dict[str, tuple[ort.InferenceSession, str]] = {}

    def get(key: str) -> tuple[ort.InferenceSession, str]:
        if key not in cache:
            cache[key] = factory.create(model_paths[key])
        return cache[key]

    return get


@pytest.fixture(scope="session")
def make(session_for: Callable[[str], tuple[ort.InferenceSession, str]]) -> Factory:
    """Build a detector for a test key exactly as the loader does, with keyword settings."""

    def build(key: str, **settings: Any) -> Any:
        spec = CATALOG[MODELS[key][0]]
        session, provider = session_for(key)
        return DETECTORS[spec.family](spec, session, provider, **settings)

    return build


@pytest.fixture(scope="session")
def detectors(make: Factory) -> dict[str, Any]:
    """One detector per model with the loader's default settings."""
    return {key: make(key) for key in ALL}


@pytest.fixture(scope="session")
def s_l(images: Path) -> np.ndarray:
    image = cv2.imread(str(images / "s_l.jpg"))
    assert image is not None
    return image


@pytest.fixture(scope="session")
def selfie(images: Path) -> np.ndarray:
    image = cv2.imread(str(images / "selfie.jpg"))
    assert image is not None
    return image


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter))


def matched(found: Detections, reference: np.ndarray) -> np.ndarray:
    """Index into ``found`` of the best-overlapping detection for each reference box."""
    assert len(found) > 0
    return np.asarray(iou(reference, found.boxes).argmax(axis=1))


def min_side(det: Detections) -> np.ndarray:
    return np.asarray(
        np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
    )


def assert_well_formed(det: Detections) -> None:
    n = len(det)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == (n,) and det.scores.dtype == np.float32
    assert det.landmarks.shape == (n, 5, 2) and det.landmarks.dtype == np.float32
    assert np.all(np.diff(det.scores) <= 0), "best score first"


# ---------------------------------------------------------------------------------------
# What they find


@pytest.mark.parametrize("key", ALL)
def test_finds_both_faces_in_s_l_with_landmarks_inside_their_boxes(
    detectors: dict[str, Any], s_l: np.ndarray, key: str
) -> None:
    det = detectors[key](s_l)
    assert_well_formed(det)
    assert len(det) == 2
    overlap = iou(S_L_FACES, det.boxes)
    assert overlap.max(axis=1).min() > 0.85, overlap
    assert sorted(overlap.argmax(axis=1).tolist()) == [0, 1], "one detection per face"
    for box, pts in zip(det.boxes, det.landmarks, strict=True):
        x1, y1, x2, y2 = box
        eyes_mouth = pts[[0, 1, 3, 4]]
        assert np.all((eyes_mouth[:, 0] > x1) & (eyes_mouth[:, 0] < x2)), (box, pts)
        assert np.all((eyes_mouth[:, 1] > y1) & (eyes_mouth[:, 1] < y2)), (box, pts)
        left_eye, right_eye, nose, left_mouth, right_mouth = pts
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize("key", ["scrfd_2.5g", "yunet"])
def test_finds_over_100_faces_in_the_crowd(make: Factory, selfie: np.ndarray, key: str) -> None:
    det = make(key, threshold=CROWD_THRESHOLD[key], min_face_px=10, max_faces=1000)(selfie)
    assert_well_formed(det)
    assert 100 < len(det) < 300, len(det)


def test_yunet_crowd_boxes_are_faces_scrfd_also_finds(make: Factory, selfie: np.ndarray) -> None:
    """Two independent networks agreeing is what says the crowd count is faces, not noise."""
    scrfd = make("scrfd_2.5g", threshold=0.3, min_face_px=10, max_faces=1000)(selfie)
    yunet = make("yunet", threshold=CROWD_THRESHOLD["yunet"], min_face_px=10, max_faces=1000)(
        selfie
    )
    agree = (iou(yunet.boxes, scrfd.boxes).max(axis=1) > 0.3).mean()
    assert agree > 0.9, agree


def test_yunet_decode_matches_opencv_facedetectoryn(
    make: Factory, model_paths: dict[str, Path], selfie: np.ndarray
) -> None:
    """OpenCV's own YuNet post-processing is the reference; no resize so both see one input."""
    image = cv2.resize(selfie, (640, 359))
    reference = cv2.FaceDetectorYN.create(str(model_paths["yunet"]), "", (640, 359), 0.6, 0.4, 5000)
    _, faces = reference.detect(image)
    faces = faces[np.argsort(-faces[:, 14])][:50]
    ours = make("yunet", threshold=0.6, min_face_px=0, max_faces=50)(image)
    assert len(ours) == 50
    np.testing.assert_allclose(ours.scores, faces[:, 14], atol=1e-4)
    # OpenCV leaves boxes unclipped; ours are clipped to the image.
    corners = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
    np.testing.assert_allclose(ours.boxes, np.clip(corners, 0, [640, 359, 640, 359]), atol=0.05)
    np.testing.assert_allclose(ours.landmarks, faces[:, 4:14].reshape(-1, 5, 2), atol=0.05)


# ---------------------------------------------------------------------------------------
# Where they put it: original-image pixels whatever the frame's shape


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize(
    ("canvas", "offset"),
    [((500, 900), (250, 120)), ((900, 460), (30, 400)), ((328, 1600), (1100, 0))],
    ids=["wide", "tall", "very-wide"],
)
def test_results_follow_the_image_inside_a_larger_frame(
    detectors: dict[str, Any],
    s_l: np.ndarray,
    key: str,
    canvas: tuple[int, int],
    offset: tuple[int, int],
) -> None:
    """s_l pasted into wide and tall frames: boxes and landmarks shift by the paste offset."""
    frame = np.full((*canvas, 3), 90, np.uint8)
    ox, oy = offset
    frame[oy : oy + s_l.shape[0], ox : ox + s_l.shape[1]] = s_l
    base = detectors[key](s_l)
    moved = detectors[key](frame)
    assert len(moved) >= 2  # YuNet at 0.5 may add a false positive on the grey
    idx = matched(moved, base.boxes + np.array([ox, oy, ox, oy], np.float32))
    shifted = moved.boxes[idx] - np.array([ox, oy, ox, oy], np.float32)
    assert np.diag(iou(base.boxes, shifted)).min() > 0.8
    # The frame is shrunk more than s_l to fit the network (down to 0.4x for "very-wide"),
    # so the faces are seen at a lower resolution: allow 15 % of the face size.
    landmark_error = np.abs(moved.landmarks[idx] - np.array([ox, oy]) - base.landmarks).max()
    face_size = (base.boxes[:, 2] - base.boxes[:, 0]).min()
    assert landmark_error < 0.15 * face_size, landmark_error


@pytest.mark.parametrize("key", ALL)
def test_padding_that_keeps_the_network_scale_shifts_results_exactly(
    detectors: dict[str, Any], s_l: np.ndarray, key: str
) -> None:
    """s_l (400 x 328) in a 400 x 400 frame 64 px down: both at 1x (frames smaller than the
    network input are not enlarged), and 64 px is two whole 32-px cells, so the network sees
    the same features; only the mapping back differs, and it must be exact."""
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[64 : 64 + s_l.shape[0]] = s_l
    base, moved = detectors[key](s_l), detectors[key](frame)
    assert len(moved) == len(base) == 2
    np.testing.assert_allclose(moved.boxes - [0, 64, 0, 64], base.boxes, atol=1.0)
    np.testing.assert_allclose(moved.landmarks - [0, 64], base.landmarks, atol=1.0)


@pytest.mark.parametrize("key", ALL)
def test_results_scale_with_the_image(detectors: dict[str, Any], s_l: np.ndarray, key: str) -> None:
    big = cv2.resize(s_l, (s_l.shape[1] * 2, s_l.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    base, scaled = detectors[key](s_l), detectors[key](big)
    assert len(scaled) == 2
    idx = matched(scaled, base.boxes * 2)
    assert np.diag(iou(base.boxes * 2, scaled.boxes[idx])).min() > 0.85


@pytest.mark.parametrize(
    ("rotation", "back"),
    [
        # rotated (xr, yr) → original (x, y) for an image of height h / width w
        (cv2.ROTATE_90_CLOCKWISE, lambda p, h, w: np.stack([p[..., 1], h - p[..., 0]], -1)),
        (cv2.ROTATE_90_COUNTERCLOCKWISE, lambda p, h, w: np.stack([w - p[..., 1], p[..., 0]], -1)),
    ],
    ids=["cw", "ccw"],
)
def test_portrait_frame_of_rotated_image_maps_back_to_the_same_faces(
    make: Factory, s_l: np.ndarray, rotation: int, back: Callable[..., np.ndarray]
) -> None:
    """A 90°-rotated (portrait) frame: the faces' centres land where the rotation says.

    The networks are not rotation-invariant (sideways faces get looser boxes and scores
    around 0.6), so this compares box centres, which stay put, rather than extents.
    """
    detector = make("scrfd_2.5g", threshold=0.4)
    h, w = s_l.shape[:2]
    upright = detector(s_l)
    rotated = detector(cv2.rotate(s_l, rotation))
    assert len(rotated) == 2
    corners = back(rotated.boxes.reshape(-1, 2, 2), h, w)
    centres = corners.mean(axis=1)
    want = (upright.boxes[:, :2] + upright.boxes[:, 2:]) / 2
    dist = np.linalg.norm(want[:, None, :] - centres[None, :, :], axis=2)
    face_size = (upright.boxes[:, 2] - upright.boxes[:, 0]).min()
    assert dist.min(axis=1).max() < 0.15 * face_size, dist


# ---------------------------------------------------------------------------------------
# Settings


def test_min_face_px_drops_small_faces(make: Factory, selfie: np.ndarray) -> None:
    small = make("scrfd_2.5g", min_face_px=0, max_faces=1000)(selfie)
    large = make("scrfd_2.5g", min_face_px=40, max_faces=1000)(selfie)
    assert min_side(small).min() < 40 <= min_side(large).min()
    assert len(large) == int((min_side(small) >= 40).sum())


def test_max_faces_keeps_the_best_scores(make: Factory, selfie: np.ndarray) -> None:
    everything = make("scrfd_2.5g", max_faces=1000)(selfie)
    top = make("scrfd_2.5g", max_faces=5)(selfie)
    assert len(everything) > 5 and len(top) == 5
    np.testing.assert_array_equal(top.scores, everything.scores[:5])
    np.testing.assert_array_equal(top.boxes, everything.boxes[:5])


@pytest.mark.parametrize("key", ["scrfd_2.5g", "yunet"])
def test_threshold_keeps_only_scores_above_it(make: Factory, selfie: np.ndarray, key: str) -> None:
    low = make(key, threshold=0.5, max_faces=1000)(selfie)
    high = make(key, threshold=0.8, max_faces=1000)(selfie)
    assert 0 < len(high) < len(low)
    assert high.scores.min() >= 0.8 and low.scores.min() >= 0.5


@pytest.mark.parametrize("key", ALL)
def test_black_image_has_no_faces(detectors: dict[str, Any], key: str) -> None:
    det = detectors[key](np.zeros((480, 640, 3), np.uint8))
    assert len(det) == 0
    assert_well_formed(det)


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 31), (3, 2000), (2000, 3), (0, 10)])
def test_tiny_and_degenerate_images_do_not_crash(
    detectors: dict[str, Any], key: str, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    det = detectors[key](rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    assert_well_formed(det)
    if len(det):
        assert np.all(det.boxes[:, 2] <= shape[1]) and np.all(det.boxes[:, 3] <= shape[0])


@pytest.mark.parametrize(
    "image", [np.zeros((20, 20), np.uint8), np.zeros((20, 20, 4), np.uint8), np.zeros((20, 20, 3))]
)
def test_rejects_images_that_are_not_bgr_uint8(
    detectors: dict[str, Any], image: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detectors["scrfd_500m"](image)


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"max_faces": 0}, {"min_face_px": -1}])
def test_rejects_impossible_settings(make: Factory, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make("scrfd_500m", **bad)


@pytest.mark.parametrize("key", ["scrfd_500m", "yunet"])
def test_calls_are_pure_and_thread_safe(
    detectors: dict[str, Any], s_l: np.ndarray, selfie: np.ndarray, key: str
) -> None:
    det = detectors[key]
    want = {id(img): det(img) for img in (s_l, selfie)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda img: (id(img), det(img)), [s_l, selfie] * 3))
    for ident, got in results:
        np.testing.assert_array_equal(got.boxes, want[ident].boxes)
        np.testing.assert_array_equal(got.landmarks, want[ident].landmarks)


def test_every_catalogue_detector_family_has_a_class() -> None:
    families = {spec.family for spec in CATALOG.values() if spec.kind == "detector"}
    assert families <= set(DETECTORS)
    assert DETECTORS["scrfd"] is SCRFD and DETECTORS["yunet"] is YuNet
    assert DETECTORS["retinaface"] is RetinaFace and DETECTORS["centerface"] is CenterFace


def test_detector_reports_its_name_provider_and_spec(detectors: dict[str, Any]) -> None:
    det = detectors["scrfd_2.5g"]
    assert (det.name, det.provider, det.spec) == ("scrfd_2.5g", "cpu", CATALOG["scrfd_2.5g"])


# ---------------------------------------------------------------------------------------
# Files that do not fit their family


@pytest.mark.parametrize(
    ("cls", "spec_name", "session_key", "match"),
    [
        (SCRFD, "scrfd_2.5g", "yunet", r"expected 9 outputs .* got 12"),
        (YuNet, "yunet", "scrfd_500m", r"expected 12 outputs cls/obj/bbox/kps"),
        (RetinaFace, "retinaface", "yunet", r"expected 9 outputs .* got 12"),
    ],
)
def test_a_session_of_another_family_is_a_mismatch_naming_the_file(
    session_for: Callable[[str], tuple[ort.InferenceSession, str]],
    cls: type,
    spec_name: str,
    session_key: str,
    match: str,
) -> None:
    spec = CATALOG[spec_name]
    with pytest.raises(ModelMismatchError, match=match) as info:
        cls(spec, *session_for(session_key))
    assert spec.files[0] in str(info.value)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_outputs_model(
    path: Path,
    outputs: dict[str, np.ndarray],
    input_shape: list[int | str],
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """An ONNX model whose outputs are fixed tensors (plus 0 x the input, so it is used)."""
    nodes = [
        helper.make_node("Cast", ["data"], ["data_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["data_f"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        if value.ndim == 4:
            nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        else:  # drop the broadcast batch axis to keep the value's rank
            nodes.append(helper.make_node("ReduceMean", ["nothing"], [f"{name}_z"], keepdims=0))
            nodes.append(helper.make_node("Add", [f"{name}_value", f"{name}_z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "constant_outputs",
        [helper.make_tensor_value_info("data", input_type, input_shape)],
        outs,
        initializer=inits,
    )
    return _save(graph, path)


def _retinaface(path: Path, max_upscale: float = 1.0) -> RetinaFace:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = CATALOG["retinaface"]
    return RetinaFace(spec, session, "cpu", min_face_px=0, max_upscale=max_upscale)


def test_retinaface_with_wrong_output_shapes_is_a_mismatch_naming_the_file(
    tmp_path: Path,
) -> None:
    outputs = {f"o{i}": np.zeros((1, 3, 20, 20), np.float32) for i in range(9)}
    path = constant_outputs_model(tmp_path / "bad.onnx", outputs, [1, 3, 640, 640])
    with pytest.raises(ModelMismatchError, match="cls/bbox/landmark") as info:
        _retinaface(path)
    assert CATALOG["retinaface"].files[0] in str(info.value)


def test_a_file_onnx_runtime_cannot_run_at_warm_up_is_a_mismatch_naming_the_file(
    tmp_path: Path,
) -> None:
    """A real ONNX Runtime error (a uint8 image input fed float32) becomes edged's."""
    outputs = {f"o{i}": np.zeros((1, 3, 20, 20), np.float32) for i in range(9)}
    path = constant_outputs_model(tmp_path / "u8.onnx", outputs, [1, 3, 64, 64], TensorProto.UINT8)
    with pytest.raises(ModelMismatchError, match=r"inference failed: .*data type") as info:
        _retinaface(path)
    assert CATALOG["retinaface"].files[0] in str(info.value)


class _SCRFDWithABug(SCRFD):
    def _select_outputs(self, declared: Any) -> list[str]:
        return declared[0].name  # type: ignore[no-any-return]  # the bug: a name, not a list


def test_a_bug_in_how_a_detector_calls_onnx_runtime_is_not_blamed_on_the_file(
    session_for: Callable[[str], tuple[ort.InferenceSession, str]],
) -> None:
    # ONNX Runtime answers a wrong argument type with TypeError: ours to fix, not the file's.
    with pytest.raises(TypeError, match="incompatible function arguments"):
        _SCRFDWithABug(CATALOG["scrfd_500m"], *session_for("scrfd_500m"))


def test_retinaface_anchor_layout_decodes_like_the_mxnet_reference(tmp_path: Path) -> None:
    """One face planted in a synthetic MXNet-layout model, decoded by hand from the reference.

    InsightFace ``face_detection.py``: stride 16 anchors are 16 * (8, 4) = 128 / 64 px
    centred at (col, row) * 16 + 7.5; ``bbox_pred``: centre + d * side, side * exp(dw) with
    the +1 convention; ``landmark_pred``: centre + d * side. Not a check against a real
    file (there is none here): it pins the decode to the reference's formulas.
    """
    outputs: dict[str, np.ndarray] = {}
    for stride in (32, 16, 8):
        n = 640 // stride
        outputs[f"cls{stride}"] = np.concatenate(
            [np.ones((1, 2, n, n)), np.zeros((1, 2, n, n))], axis=1
        )
        outputs[f"bbox{stride}"] = np.zeros((1, 8, n, n))
        outputs[f"lmk{stride}"] = np.zeros((1, 20, n, n))
    row, col, anchor = 10, 20, 1  # stride 16, second anchor: side 64
    outputs["cls16"][0, 2 + anchor, row, col] = 0.9
    outputs["cls16"][0, anchor, row, col] = 0.1
    outputs["bbox16"][0, 4 * anchor : 4 * anchor + 4, row, col] = [0.1, -0.2, np.log(1.5), 0.0]
    lmk = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.2], [0.15, 0.2]])
    outputs["lmk16"][0, 10 * anchor : 10 * anchor + 10, row, col] = lmk.ravel()
    path = constant_outputs_model(tmp_path / "retinaface.onnx", outputs, [1, 3, 640, 640])
    detector = _retinaface(path, max_upscale=2.0)
    assert detector.layout == "anchor"

    det = detector(np.zeros((640, 640, 3), np.uint8))
    assert len(det) == 1
    cx, cy, side = col * 16 + 7.5 + 0.1 * 64, row * 16 + 7.5 - 0.2 * 64, 64.0
    w, h = 1.5 * side, side
    want = [cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2]
    np.testing.assert_allclose(det.boxes[0], want, atol=1e-3)
    np.testing.assert_allclose(det.scores, [0.9], atol=1e-6)
    centre = np.array([col * 16 + 7.5, row * 16 + 7.5])
    np.testing.assert_allclose(det.landmarks[0], centre + lmk * side, atol=1e-3)

    # With enlarging allowed, a 320 x 320 image fills the 640 input at scale 2: the same
    # face at half the size.
    half = detector(np.zeros((320, 320, 3), np.uint8))
    np.testing.assert_allclose(half.boxes[0], np.array(want) / 2, atol=1e-3)


def test_retinaface_distance_layout_decodes_like_insightface(
    session_for: Callable[[str], tuple[ort.InferenceSession, str]], s_l: np.ndarray
) -> None:
    """InsightFace's ONNX RetinaFace class decodes SCRFD-style; a real file of that layout
    (SCRFD-2.5G: InsightFace routes it to the same class) must give SCRFD's results."""
    session, provider = session_for("scrfd_2.5g")
    retina = RetinaFace(CATALOG["retinaface"], session, provider)
    scrfd = SCRFD(CATALOG["scrfd_2.5g"], session, provider)
    assert retina.layout == "distance"
    a, b = retina(s_l), scrfd(s_l)
    assert len(a) == 2
    np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.fixture(scope="session")
def shuffled_scrfd(model_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SCRFD-0.5G with its 9 outputs renamed and listed in a scrambled order."""
    model = onnx.load(str(model_paths["scrfd_500m"]))
    outputs = list(model.graph.output)
    order = [7, 2, 4, 0, 8, 3, 6, 1, 5]
    del model.graph.output[:]
    model.graph.output.extend(outputs[i] for i in order)
    path = tmp_path_factory.mktemp("shuffled") / "scrfd_shuffled.onnx"
    onnx.save(model, str(path))
    return path


def test_scrfd_tells_outputs_apart_by_shape_not_position(
    shuffled_scrfd: Path, detectors: dict[str, Any], s_l: np.ndarray, selfie: np.ndarray
) -> None:
    session = ort.InferenceSession(str(shuffled_scrfd), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][:2] == ["out7", "out2"]
    shuffled = SCRFD(CATALOG["scrfd_500m"], session, "cpu")
    for image in (s_l, selfie):
        np.testing.assert_array_equal(shuffled(image).boxes, detectors["scrfd_500m"](image).boxes)


@pytest.fixture(scope="session")
def dynamic_scrfd(model_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SCRFD-0.5G re-declared with a dynamic H x W input, like buffalo_l's ``det_10g``."""
    model = onnx.load(str(model_paths["scrfd_500m"]))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if dim.dim_value > 1:
                dim.ClearField("dim_value")
                dim.dim_param = "rows"
    del model.graph.value_info[:]
    path = tmp_path_factory.mktemp("dynamic") / "scrfd_dynamic.onnx"
    onnx.save(model, str(path))
    return path


def test_dynamic_scrfd_uses_a_non_square_input_and_finds_the_same_faces(
    dynamic_scrfd: Path,
    session_for: Callable[[str], tuple[ort.InferenceSession, str]],
    selfie: np.ndarray,
) -> None:
    session = ort.InferenceSession(str(dynamic_scrfd), providers=["CPUExecutionProvider"])
    dynamic = SCRFD(CATALOG["scrfd_500m"], session, "cpu", max_faces=1000)
    _, geo = dynamic.preprocess(selfie)
    assert (geo.in_w, geo.in_h) == (640, 384)  # 2048 x 1150 → 640 x 359, padded to 32
    fixed = SCRFD(CATALOG["scrfd_500m"], *session_for("scrfd_500m"), max_faces=1000)
    a, b = dynamic(selfie), fixed(selfie)
    assert len(a) > 100 and abs(len(a) - len(b)) <= 2
    assert np.median(iou(a.boxes, b.boxes).max(axis=1)) > 0.95


def test_scrfd_without_landmark_outputs_is_a_mismatch(tmp_path: Path) -> None:
    """A 6-output SCRFD export (no ``kps``) cannot feed alignment: refused, file named."""
    outputs = {}
    for c in (1, 4):
        for stride in (8, 16, 32):
            outputs[f"o{c}_{stride}"] = np.zeros((1, (640 // stride) ** 2 * 2, c))
    path = constant_outputs_model(tmp_path / "nokps.onnx", outputs, [1, 3, 640, 640])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec: ModelSpec = CATALOG["scrfd_500m"]
    with pytest.raises(ModelMismatchError, match="got 6") as info:
        SCRFD(spec, session, "cpu")
    assert spec.files[0] in str(info.value)


@pytest.mark.parametrize("key", ["scrfd_2.5g", "yunet"])
def test_preprocess_gives_the_same_blob_as_opencv_blobfromimage(
    detectors: dict[str, Any], s_l: np.ndarray, selfie: np.ndarray, key: str
) -> None:
    from edged.models.detection.common import letterbox

    det = detectors[key]
    for image in (s_l, selfie):
        blob, geo = det.preprocess(image)
        scale, mean, swap_rb = det._blob_params
        ref = cv2.dnn.blobFromImage(
            letterbox(image, geo), scale, (geo.in_w, geo.in_h), (mean, mean, mean), swapRB=swap_rb
        )
        assert blob.dtype == np.float32 and blob.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(blob, ref)
