"""Face crops: box crops with margin and 5-point similarity alignment.

Synthetic images with known patterns pin the geometry exactly; one real detection on
s_l.jpg checks the alignment does what it is for (eyes level, on the template).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.models.catalog import CATALOG
from edged.models.crops import (
    ARCFACE_TEMPLATE,
    align_crops,
    align_transforms,
    box_crops,
    box_windows,
    similarity_transforms,
    template,
)
from edged.models.detection import SCRFD, Detections
from edged.models.providers import SessionFactory

MARK_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.array(shift)[:, None]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts @ m[:, :2].T + m[:, 2])


@pytest.fixture(scope="module")
def s_l_faces(models_dir: Path, images: Path) -> tuple[np.ndarray, Detections]:
    read = cv2.imread(str(images / "s_l.jpg"))
    assert read is not None
    image = np.asarray(read, np.uint8)
    spec = CATALOG["scrfd_500m"]
    session, provider = SessionFactory(providers=["cpu"]).create(models_dir / spec.files[0])
    return image, SCRFD(spec, session, provider)(image)


# ---------------------------------------------------------------------------------------
# Alignment


def test_template_at_112_without_margin_is_arcface() -> None:
    np.testing.assert_allclose(template(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)


def test_margin_zooms_the_template_out_about_the_crop_centre() -> None:
    tight, loose = template(224), template(224, margin=0.25)
    gap_tight, gap_loose = (float(np.linalg.norm(t[1] - t[0])) for t in (tight, loose))
    assert gap_loose == pytest.approx(gap_tight / 1.5, rel=1e-5)
    np.testing.assert_allclose(loose - 112, (tight - 112) / 1.5, atol=1e-4)


def test_similarity_transforms_recover_known_similarities_in_one_batch() -> None:
    rng = np.random.default_rng(1)
    dst = template(224, 0.1)
    truths = [
        similarity(rng.uniform(-90, 90), rng.uniform(0.2, 5), tuple(rng.uniform(-300, 300, 2)))
        for _ in range(8)
    ]
    # landmarks whose image under the truth is the template: truth⁻¹(template)
    src = np.stack([apply(cv2.invertAffineTransform(t), dst) for t in truths])
    got = similarity_transforms(src.astype(np.float32), dst)
    assert got.shape == (8, 2, 3)
    np.testing.assert_allclose(got, np.stack(truths), atol=2e-3)


def test_mirrored_landmarks_get_a_rotation_never_a_reflection() -> None:
    dst = template(112)
    mirrored = dst * [-1, 1] + [200, 0]  # left and right swapped
    m = similarity_transforms(mirrored[None].astype(np.float32), dst)[0]
    assert np.linalg.det(m[:, :2]) > 0


def test_aligned_crop_puts_the_marked_landmarks_on_the_template() -> None:
    """Five coloured dots at a rotated, scaled, shifted face's landmarks land on the template."""
    size, margin = 224, 0.2
    face = apply(similarity(25, 1.7, (180, 60)), ARCFACE_TEMPLATE * 1.5)
    image = np.zeros((480, 640, 3), np.uint8)
    for (x, y), colour in zip(face, MARK_COLOURS, strict=True):
        cv2.circle(image, (round(x), round(y)), 6, colour, -1, lineType=cv2.LINE_AA)
    crop = align_crops(image, face[None].astype(np.float32), size, margin)
    assert crop.shape == (1, size, size, 3) and crop.dtype == np.uint8
    want = template(size, margin)
    for point, colour in zip(want, MARK_COLOURS, strict=True):
        weight = (crop[0].astype(np.float32) * colour).sum(axis=2) / (255.0 * 255 * 3)
        mask = (np.abs(crop[0].astype(int) - colour).max(axis=2) < 100).astype(np.float32)
        ys, xs = np.nonzero(mask * weight)
        assert xs.size > 10, colour
        centroid = np.array([xs.mean(), ys.mean()])
        assert np.linalg.norm(centroid - point) < 1.5, (colour, centroid, point)


def test_real_landmarks_align_with_eyes_level_on_the_template(
    s_l_faces: tuple[np.ndarray, Detections],
) -> None:
    image, det = s_l_faces
    assert len(det) == 2
    size = 224
    mats = align_transforms(det.landmarks, size, margin=0.15)
    want = template(size, 0.15)
    for m, pts in zip(mats, det.landmarks, strict=True):
        moved = apply(m, pts)
        eyes = moved[1] - moved[0]
        assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 3.0
        # real faces differ from the template's shape, but not by much
        assert np.linalg.norm(moved - want, axis=1).max() < 0.06 * size
    crops = align_crops(image, det.landmarks, size, margin=0.15)
    assert crops.shape == (2, size, size, 3)
    assert crops.std() > 20  # a face, not padding


@pytest.mark.parametrize("size", [48, 112, 224, 260])
def test_align_crops_are_exactly_the_requested_size_even_when_degenerate(size: int) -> None:
    image = np.full((100, 120, 3), 200, np.uint8)
    landmarks = np.stack(
        [
            template(112) + 3,  # ordinary
            np.full((5, 2), 50.0),  # all five points on one pixel
            template(112) * 0.01 - 500,  # tiny and far outside the frame
        ]
    ).astype(np.float32)
    crops = align_crops(image, landmarks, size)
    assert crops.shape == (3, size, size, 3) and crops.dtype == np.uint8


def test_no_faces_give_an_empty_batch_of_the_right_shape() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    assert align_crops(image, np.zeros((0, 5, 2), np.float32), 224).shape == (0, 224, 224, 3)
    assert box_crops(image, np.zeros((0, 4), np.float32), 260).shape == (0, 260, 260, 3)


# ---------------------------------------------------------------------------------------
# Box crops


def test_box_crop_inside_the_frame_equals_hsemotion_resize_of_the_box() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    image = np.asarray(cv2.GaussianBlur(noise, (5, 5), 2), np.uint8)
    boxes = np.array([[40, 30, 140, 170], [200, 100, 390, 290], [0, 0, 400, 300]], np.float32)
    crops = box_crops(image, boxes, 224)
    for crop, (x1, y1, x2, y2) in zip(crops, boxes.astype(int), strict=True):
        reference = cv2.resize(image[y1:y2, x1:x2], (224, 224))
        # Inside, the same sampling (warpAffine's 1/32-pixel interpolation table against
        # resize's finer one: off by at most a level). On the outermost pixels resize clamps
        # to the box while the warp reads the real neighbouring pixels (or black beyond the
        # frame edge), so they differ there by design.
        inner = np.abs(crop.astype(int) - reference)[2:-2, 2:-2]
        assert inner.max() <= 1 and inner.mean() < 0.2


def test_box_crop_keeps_orientation_of_a_known_pattern() -> None:
    """Quadrants of four colours inside the box come out in the same corners."""
    image = np.zeros((200, 300, 3), np.uint8)
    x1, y1, x2, y2 = 100, 40, 180, 160  # box 80 x 120: resized straight, not squared
    cx, cy = 140, 100
    image[y1:cy, x1:cx] = (255, 0, 0)
    image[y1:cy, cx:x2] = (0, 255, 0)
    image[cy:y2, x1:cx] = (0, 0, 255)
    image[cy:y2, cx:x2] = (255, 255, 255)
    crop = box_crops(image, np.array([[x1, y1, x2, y2]], np.float32), 64)[0]
    assert tuple(crop[10, 10]) == (255, 0, 0)
    assert tuple(crop[10, 53]) == (0, 255, 0)
    assert tuple(crop[53, 10]) == (0, 0, 255)
    assert tuple(crop[53, 53]) == (255, 255, 255)


def test_margin_adds_that_fraction_of_the_box_on_every_side() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    image[:] = (0, 255, 0)
    image[100:200, 150:230] = (0, 0, 255)  # the box (80 wide, 100 tall) is red
    box = np.array([[150, 100, 230, 200]], np.float32)
    np.testing.assert_allclose(box_windows(box, 0.25), [[130, 75, 250, 225]])
    crop = box_crops(image, box, 150, margin=0.25)[0]
    # margin 0.25 → window 1.5x the box → the box is the middle 2/3: border bands of 25 px
    red = (crop[:, :, 2] > 128) & (crop[:, :, 1] < 128)
    rows, cols = np.nonzero(red)
    assert (rows.min(), cols.min()) == (25, 25)
    assert (rows.max(), cols.max()) == (124, 124)


def test_square_windows_grow_the_short_side_about_the_centre() -> None:
    win = box_windows(np.array([[100, 50, 140, 150]], np.float32), 0.0, square=True)
    np.testing.assert_allclose(win, [[70, 50, 170, 150]])


def test_window_beyond_the_frame_is_filled_with_black() -> None:
    image = np.full((200, 200, 3), 255, np.uint8)
    box = np.array([[0, 0, 50, 50]], np.float32)  # margin 0.5 → window (-25, -25, 75, 75)
    crop = box_crops(image, box, 100, margin=0.5)[0]
    assert crop[:24, :].max() == 0 and crop[:, :24].max() == 0
    assert crop[26:, 26:].min() == 255


def test_degenerate_and_outside_boxes_still_give_exact_size_crops() -> None:
    image = np.full((50, 60, 3), 77, np.uint8)
    boxes = np.array(
        [[10, 10, 10, 10], [-500, -500, -400, -400], [55, 45, 70, 80], [0, 0, 1, 1]],
        np.float32,
    )
    crops = box_crops(image, boxes, 224, margin=0.1)
    assert crops.shape == (4, 224, 224, 3)
    assert crops[1].max() == 0  # wholly outside: all padding


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32)])
def test_crops_reject_images_that_are_not_hxwx3_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        box_crops(bad, np.zeros((1, 4), np.float32), 32)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        align_crops(bad, np.zeros((1, 5, 2), np.float32), 32)
