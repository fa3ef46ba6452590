"""The per-camera processor on a real video of a real face: detection interval and scheduling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import PipelineSettings, Settings, SmoothingSettings
from edged.models.providers import SessionFactory
from edged.pipeline import Pipeline, build_pipeline
from edged.runtime.processor import CameraFrame, CameraProcessor, process_batch
from edged.runtime.tracking import Tracker

FPS = 10


@pytest.fixture(scope="module")
def pipe(models_dir: Path) -> Pipeline:
    return build_pipeline(
        Settings(pipeline={"providers": ["cpu"]}),
        SessionFactory(providers=["cpu"]),
        detector="scrfd_500m",
        classifier="edged_fer",
        models_dir=models_dir,
    )


@pytest.fixture(scope="module")
def moving_face(pipe: Pipeline, images: Path) -> list[np.ndarray]:
    """One real face (from s_l.jpg) moving 6 px per frame across a grey 480x360 frame."""
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    x1, y1, x2, y2 = (int(v) for v in pipe.process_one(img).faces[0].bbox)
    w, h = x2 - x1, y2 - y1
    tile = cv2.resize(
        img[max(0, y1 - h // 3) : y2 + h // 3, max(0, x1 - w // 3) : x2 + w // 3], (140, 140)
    )
    frames = []
    for i in range(30):
        frame = np.full((360, 480, 3), 70, np.uint8)
        x = 20 + 6 * i
        frame[100:240, x : x + 140] = tile
        frames.append(frame)
    return frames


def run(
    pipe: Pipeline, frames: list[np.ndarray], settings: PipelineSettings
) -> tuple[CameraProcessor, list[list[int]], list[bool], list[int]]:
    proc = CameraProcessor(Tracker(SmoothingSettings(min_confidence=0.0), "cam", "dev"), settings)
    ids, detected, classified = [], [], []
    for i, image in enumerate(frames):
        (out,) = process_batch(pipe, [(proc, CameraFrame(image, i / FPS, i / FPS))])
        ids.append(proc.tracker.track_ids)
        detected.append(out.detected)
        classified.append(out.classified)
        assert [f.emotion is not None for f in out.faces] == [True] * len(out.faces)
    return proc, ids, detected, classified


def test_a_detection_interval_keeps_the_track_id_across_skipped_frames(
    pipe: Pipeline, moving_face: list[np.ndarray]
) -> None:
    _, ids, detected, _ = run(pipe, moving_face, PipelineSettings(detect_interval=4))
    # While the new track is unsettled (no emotion established yet) every frame is
    # detected and classified; once it is settled, every 4th frame is.
    first_skip = detected.index(False)
    assert first_skip >= 1 and all(detected[:first_skip])
    assert detected[first_skip - 1 : first_skip + 8] == [
        True, False, False, False, True, False, False, False, True,
    ]  # fmt: skip
    assert ids == [[1]] * len(moving_face)


def test_a_settled_face_is_classified_far_less_than_every_frame(
    pipe: Pipeline, moving_face: list[np.ndarray]
) -> None:
    every = run(pipe, moving_face, PipelineSettings(reclassify_interval_s=0))[3]
    assert every == [1] * len(moving_face)
    proc, ids, _, sched = run(pipe, moving_face, PipelineSettings(reclassify_interval_s=1.0))
    assert sched[0] == 1  # new
    assert sum(sched) < len(moving_face) - 8
    assert 0 in sched[12:]  # settled and moved less than the box change: reused
    assert ids[-1] == [1]
    assert proc.tracker.state()[0] != "none"


def test_a_face_missed_by_detection_ends_only_after_the_track_timeout(
    pipe: Pipeline, moving_face: list[np.ndarray]
) -> None:
    proc = CameraProcessor(
        Tracker(SmoothingSettings(min_confidence=0.0, track_timeout_s=2.0), "cam", "dev"),
        PipelineSettings(detect_interval=3),
    )
    blank = np.full_like(moving_face[0], 70)
    frames = moving_face[:18] + [blank] * 30
    left_at = None
    for i, image in enumerate(frames):
        out = proc.process(pipe, CameraFrame(image, i / FPS, i / FPS))
        if any(e.type == "left" for e in out.events):
            left_at = i / FPS
            break
    assert left_at is not None
    # last detection of the face at frame 15 (1.5 s), carried to frame 17: never earlier
    assert 1.5 + 2.0 - 1e-6 <= left_at <= 1.7 + 2.0 + 0.1 + 1e-6
