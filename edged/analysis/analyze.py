"""``edged analyze IMAGE|VIDEO``: the pipeline once over a file, JSON out, optional annotation.

The same models, fallback and crop mode as the daemon (the config's ``[pipeline]`` section,
overridable per call), so an operator can check what the daemon would see on a recorded
clip. Output is the contract's object ``{"faces": [...], "models": {...}, "providers":
{...}}``: one per image, one per frame for a video (with ``frame`` and ``timestamp_s``).
``--detector`` alone (no classifier, no phase) runs detection only.

Video frames are processed a few at a time so the faces of several frames share one
batched classifier call, like the daemon does across cameras.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import structlog

from edged.analysis.annotate import draw_faces
from edged.config import Settings
from edged.errors import CaptureError, ConfigError, EdgedError
from edged.models.catalog import PHASES
from edged.models.loader import session_factory
from edged.models.providers import ORT_NAMES
from edged.pipeline import FrameResult, Pipeline, build_pipeline

log = structlog.get_logger(__name__)

Image = npt.NDArray[np.uint8]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".jp2"}
)
#: Frames of a video processed (and classified) together.
VIDEO_BATCH = 8


def analyze_file(
    settings: Settings,
    path: Path,
    *,
    phase: str | None = None,
    detector: str | None = None,
    classifier: str | None = None,
    models_dir: Path | None = None,
    out: Path | None = None,
    providers: Sequence[str] | None = None,
    emit: Callable[[dict[str, Any]], None],
    blur: bool = False,
) -> None:
    """Run the pipeline on an image or video file; ``emit`` receives one object per frame.

    ``blur``: the annotated copy (``out``) shows every face pixelated, for sharing an
    example without sharing faces; the JSON is unchanged. Without ``out`` it is an error.

    Raises CaptureError when the file cannot be read, ConfigError for unknown phases or
    providers, ModelError (and subclasses) when no model can be loaded, EdgedError when the
    annotated output cannot be written.
    """
    _check_request(path, phase, providers, blur=blur, out=out)
    # Read before loading any model: a wrong path should fail in milliseconds, not seconds.
    image, video = _open_input(path)
    try:
        detect_only = detector is not None and classifier is None and phase is None
        pipe = build_pipeline(
            settings,
            session_factory(settings, providers),
            phase=phase,
            detector=detector,
            classifier=classifier,
            models_dir=models_dir,
            detect_only=detect_only,
        )
        if video is None:
            assert image is not None
            _analyze_image(pipe, image, out, emit, blur)
        else:
            _analyze_video(pipe, path, video[0], video[1], out, emit, blur)
    finally:
        if video is not None:
            video[0].release()


def _check_request(
    path: Path, phase: str | None, providers: Sequence[str] | None, *, blur: bool, out: Path | None
) -> None:
    """Refuse a bad request before anything is read or loaded, naming the option at fault."""
    if phase is not None and phase not in PHASES:
        raise ConfigError(f"--phase: unknown phase {phase!r}; known: {', '.join(PHASES)}")
    if providers:
        unknown = [p for p in providers if p not in ORT_NAMES]
        if unknown:
            raise ConfigError(
                f"--providers: unknown provider(s) {', '.join(unknown)}; "
                f"known: {', '.join(ORT_NAMES)}"
            )
    if blur and out is None:
        raise ConfigError("--blur applies to the annotated copy: give --out PATH as well")
    if path.is_dir():
        raise CaptureError(f"{path}: is a directory, not an image or video file")
    if not path.is_file():
        # Only regular files: a FIFO would block the read, a device node is a camera.
        raise CaptureError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")


def _open_input(
    path: Path,
) -> tuple[Image | None, tuple[cv2.VideoCapture, tuple[Image, float]] | None]:
    """The file as an image, or as an open video and its first frame (exactly one is set).

    An image suffix is read as an image only; anything else is tried as a video first,
    then as an image (a still under an unexpected name)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = _read_image(path)
        if image is None:
            raise CaptureError(f"{path}: cannot decode it as an image")
        return image, None
    opened = _open_video(path)
    if opened is not None:
        return None, opened
    image = _read_image(path)
    if image is None:
        raise CaptureError(f"{path}: cannot read it as a video or an image")
    return image, None


def frame_json(pipe: Pipeline, result: FrameResult) -> dict[str, Any]:
    """The contract's per-frame object."""
    return {
        "faces": [face.to_json() for face in result.faces],
        "models": pipe.models,
        "providers": pipe.providers,
    }


def _read_image(path: Path) -> Image | None:
    """The decoded image, or None when the bytes are not an image.

    The bytes are read here rather than by ``cv2.imread``, which cannot say why it failed
    (and not all OpenCV builds read non-ASCII paths); an unreadable file (permissions, a
    directory, an I/O error) is a CaptureError naming it instead of a bare OSError.
    """
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if img is None else np.asarray(img, np.uint8)


def _open_video(path: Path) -> tuple[cv2.VideoCapture, tuple[Image, float]] | None:
    """An opened capture and its first frame (with its timestamp), or None.

    The first frame is read here, not re-read after a seek, so a stream that cannot seek
    still works.
    """
    cap = cv2.VideoCapture(str(path))
    if cap.isOpened():
        ok, frame = cap.read()
        if ok and frame is not None:
            return cap, (np.asarray(frame, np.uint8), cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
    cap.release()
    return None


def _analyze_image(
    pipe: Pipeline,
    image: Image,
    out: Path | None,
    emit: Callable[[dict[str, Any]], None],
    blur: bool = False,
) -> None:
    (result,) = pipe.process([image])
    emit(frame_json(pipe, result))
    if out is not None:
        try:
            ok = cv2.imwrite(str(out), draw_faces(image, result.faces, blur=blur))
        except cv2.error as exc:
            raise EdgedError(f"cannot write the annotated image {out}: {exc}") from exc
        if not ok:
            raise EdgedError(
                f"cannot write the annotated image {out} (does the folder exist, is the "
                "extension an image format such as .jpg or .png?)"
            )


def _frames(
    capture: cv2.VideoCapture, first: tuple[Image, float]
) -> Iterator[list[tuple[Image, float]]]:
    """Batches of (frame, the capture's own timestamp in seconds) as decoded."""
    batch: list[tuple[Image, float]] = [first]
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            break
        batch.append((np.asarray(frame, np.uint8), capture.get(cv2.CAP_PROP_POS_MSEC) / 1000))
        if len(batch) == VIDEO_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _analyze_video(
    pipe: Pipeline,
    path: Path,
    capture: cv2.VideoCapture,
    first: tuple[Image, float],
    out: Path | None,
    emit: Callable[[dict[str, Any]], None],
    blur: bool = False,
) -> None:
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        fps = 0.0
    writer: cv2.VideoWriter | None = None
    index = 0
    try:
        for batch in _frames(capture, first):
            frames = [frame for frame, _ in batch]
            results = pipe.process(frames)
            for (frame, pos_s), result in zip(batch, results, strict=True):
                obj = frame_json(pipe, result)
                obj["frame"] = index
                # The frame rate gives exact times for constant-rate files; otherwise trust
                # the demuxer's position.
                obj["timestamp_s"] = round(index / fps if fps else pos_s, 3)
                emit(obj)
                if out is not None:
                    if writer is None:
                        writer = _open_writer(out, fps or 25.0, frame)
                    writer.write(draw_faces(frame, result.faces, blur=blur))
                index += 1
    finally:
        if writer is not None:
            writer.release()
    if index == 0:
        raise CaptureError(f"{path}: the video has no readable frames")
    log.info("analyze_done", file=str(path), frames=index, out=str(out) if out else None)


def _open_writer(out: Path, fps: float, frame: Image) -> cv2.VideoWriter:
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        writer.release()
        raise EdgedError(
            f"cannot write the annotated video {out} (does the folder exist, is the extension "
            "a video container such as .mp4?)"
        )
    return writer
