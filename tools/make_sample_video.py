#!/usr/bin/env python3
"""Write a short sample video: a face appears, changes expression, leaves and comes back.

The quickstart runs the daemon on it so a new user sees ``appeared``, ``changed`` and
``left`` events without a camera. By default the faces come from two pictures that
scikit-image ships: the public-domain NASA portrait of Eileen Collins
(``skimage/data/astronaut.png``, smiling: ``happy``) and Lav Varshney's CC0 "camera" photo
(``skimage/data/camera.png``, a serious face: ``sad``/``neutral`` for edged_fer). The
second face replaces the first in the same place, so the tracker keeps one track and the
emotion change is a ``changed`` event. The quickstart installs scikit-image with
``--no-deps`` only to read those files; nothing of edged imports it.

    python tools/make_sample_video.py .edged/sample.mp4 [--image face.jpg [--image other.jpg]]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

#: The bundled pictures: the face box (x, y, w, h) as YuNet finds it, the margin cut around
#: it (a fraction of its height) and whether to mirror it, so the two faces line up in the
#: video. The camera face is mirrored and cut tighter because edged_fer then reads it as
#: ``sad`` with more confidence (about 0.35-0.45, against 0.3 unmirrored).
BUNDLED: dict[str, tuple[tuple[int, int, int, int], float, bool]] = {
    "astronaut.png": ((178, 65, 91, 111), 0.6, False),
    "camera.png": ((198, 114, 60, 83), 0.4, True),
}


def bundled_picture(name: str) -> Path:
    """One of scikit-image's sample pictures, inside the installed package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "no --image given and scikit-image is not installed: "
            "pip install --no-deps scikit-image (only its sample pictures are used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the scikit-image install")
    return path


def face_window(
    image: np.ndarray, box: tuple[int, int, int, int], margin: float, mirror: bool
) -> np.ndarray:
    """The face with ``margin`` of its height all round (clipped to the image)."""
    x, y, w, h = box
    m = int(margin * h)
    x0, y0 = max(0, x + w // 2 - (h // 2 + m)), max(0, y - m)
    x1, y1 = min(image.shape[1], x + w // 2 + h // 2 + m), min(image.shape[0], y + h + m)
    window = image[y0:y1, x0:x1]
    return cv2.flip(window, 1) if mirror else window


def _fit(face: np.ndarray, height: int) -> np.ndarray:
    scale = 0.8 * height / face.shape[0]
    return cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def compose(
    faces: list[np.ndarray], width: int, height: int, fps: float, seconds: float
) -> list[np.ndarray]:
    """Frames: the first face drifting (0-25 %), the second in its place (25-45 %), nobody
    (45-55 %), the first face back mirrored and warmer (55-100 %). With one face the
    second segment shows it too."""
    first = _fit(faces[0], height)
    second = cv2.resize(_fit(faces[-1], height), first.shape[1::-1])
    mirrored = cv2.convertScaleAbs(cv2.flip(first, 1), alpha=1.15, beta=10)
    fh, fw = first.shape[:2]
    n = round(fps * seconds)
    frames: list[np.ndarray] = []
    for i in range(n):
        t = i / max(n - 1, 1)
        frame = np.full((height, width, 3), 40, np.uint8)
        if t < 0.45 or t >= 0.55:
            img = first if t < 0.25 else second if t < 0.45 else mirrored
            phase = t / 0.45 if t < 0.45 else (t - 0.55) / 0.45
            x = max(0, int((width - fw) * (0.2 + 0.3 * phase)))
            y = max(0, (height - fh) // 2)
            part = img[: height - y, : width - x]
            frame[y : y + part.shape[0], x : x + part.shape[1]] = part
        frames.append(frame)
    return frames


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read image {path}")
    return image


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--image",
        type=Path,
        action="append",
        help="a photo with one face; twice for a second expression (default: scikit-image's)",
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.image:
        sources = list(args.image[:2])
        faces = [read_bgr(p) for p in sources]
    else:
        sources = [bundled_picture(name) for name in BUNDLED]
        faces = [
            face_window(read_bgr(p), *cut) for p, cut in zip(sources, BUNDLED.values(), strict=True)
        ]
    frames = compose(faces, args.width, args.height, args.fps, args.seconds)
    write_video(args.out, frames, args.fps)
    names = ", ".join(str(p) for p in sources)
    print(f"wrote {args.out}: {len(frames)} frames at {args.fps} fps from {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
