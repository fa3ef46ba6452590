#!/usr/bin/env python3
"""Write a short sample video in which a face appears, moves, leaves and comes back.

The quickstart runs the daemon on it so a new user sees ``appeared`` and ``left`` events
(and usually a ``changed`` one) without a camera. The face comes from an image you pass,
or by default from the public-domain NASA portrait of Eileen Collins that scikit-image
ships as ``skimage/data/astronaut.png`` (the quickstart installs scikit-image with
``--no-deps`` only to read that file; nothing of edged imports it).

    python tools/make_sample_video.py .edged/sample.mp4 [--image face.jpg]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np


def bundled_portrait() -> Path:
    """The astronaut portrait inside the installed scikit-image package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "no --image given and scikit-image is not installed: "
            "pip install --no-deps scikit-image (only its sample picture is used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the scikit-image install")
    return path


def compose(
    face: np.ndarray, width: int, height: int, fps: float, seconds: float
) -> list[np.ndarray]:
    """Frames: face drifting (0-40%), gone (40-55%), back mirrored and warmer (55-100%)."""
    scale = 0.8 * height / face.shape[0]
    small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    mirrored = cv2.convertScaleAbs(cv2.flip(small, 1), alpha=1.15, beta=10)
    fh, fw = small.shape[:2]
    n = round(fps * seconds)
    frames: list[np.ndarray] = []
    for i in range(n):
        t = i / max(n - 1, 1)
        frame = np.full((height, width, 3), 40, np.uint8)
        if t < 0.40 or t >= 0.55:
            img = small if t < 0.40 else mirrored
            phase = t / 0.40 if t < 0.40 else (t - 0.55) / 0.45
            x = int((width - fw) * (0.2 + 0.3 * phase))
            y = (height - fh) // 2
            frame[y : y + fh, x : x + fw] = img[: height - y, : width - x]
        frames.append(frame)
    return frames


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
    parser.add_argument("--image", type=Path, help="a photo with one face (default: astronaut)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    source = args.image or bundled_portrait()
    face = cv2.imread(str(source))
    if face is None:
        raise SystemExit(f"cannot read image {source}")
    frames = compose(face, args.width, args.height, args.fps, args.seconds)
    write_video(args.out, frames, args.fps)
    print(f"wrote {args.out}: {len(frames)} frames at {args.fps} fps from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
