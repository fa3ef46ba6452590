"""``edged analyze`` through the real command line (a subprocess, as an operator runs it).

Videos are written by the tests with cv2.VideoWriter from the real photo; the annotated
outputs are read back with OpenCV.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.analysis.analyze import _read_image
from edged.errors import CaptureError

CONTRACT_FACE_KEYS = {"bbox", "score", "landmarks", "emotion", "confidence", "scores"}


def edged(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edged`` in ``cwd`` with no EDGED_* variables (no stray config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    return subprocess.run(
        [sys.executable, "-m", "edged", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def clip(tmp_path: Path, images: Path) -> Path:
    """Five frames of s_l.jpg (the last two mirrored) at 10 fps."""
    img = cv2.imread(str(images / "s_l.jpg"))
    assert img is not None
    path = tmp_path / "clip.mp4"
    h, w = img.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(5):
        writer.write(img if i < 3 else cv2.flip(img, 1))
    writer.release()
    return path


def test_image_gives_contract_json_and_an_annotated_copy(
    tmp_path: Path, images: Path, models_dir: Path
) -> None:
    out = tmp_path / "annotated.jpg"
    proc = edged(
        "analyze", images / "s_l.jpg", "--models-dir", models_dir,
        "--detector", "scrfd_2.5g", "--classifier", "enet_b0_8", "--out", out,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (obj,) = json_lines(proc.stdout)
    assert obj["models"] == {"detector": "scrfd_2.5g", "classifier": "enet_b0_8"}
    assert obj["providers"] == {"scrfd_2.5g": "cpu", "enet_b0_8": "cpu"}
    assert len(obj["faces"]) == 2
    for face in obj["faces"]:
        assert set(face) == CONTRACT_FACE_KEYS
        x, y, w, h = face["bbox"]
        assert w > 20 and h > 20 and 0 <= x < 400 and 0 <= y < 328
        assert len(face["landmarks"]) == 5
        assert face["emotion"] in face["scores"]
        assert face["confidence"] == max(face["scores"].values())
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    original = cv2.imread(str(images / "s_l.jpg"))
    drawn = cv2.imread(str(out))
    assert original is not None and drawn is not None
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes were drawn


def test_lite_phase_classifies_both_faces_with_the_shipped_multi_view_model(
    tmp_path: Path, images: Path, models_dir: Path
) -> None:
    proc = edged(
        "analyze", images / "s_l.jpg", "--models-dir", models_dir, "--phase", "lite",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (obj,) = json_lines(proc.stdout)
    assert obj["models"] == {"detector": "yunet", "classifier": "edged_fer"}
    assert len(obj["faces"]) == 2
    seven = {"neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"}
    for face in obj["faces"]:
        assert set(face["scores"]) == seven  # a 7-class model never says contemptuous
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["confidence"] > 1 / 7 + 0.1  # a trained model, not a flat guess


def test_video_gives_one_json_line_per_frame_and_an_annotated_video(
    tmp_path: Path, clip: Path, models_dir: Path
) -> None:
    out = tmp_path / "annotated.mp4"
    proc = edged(
        "analyze", clip, "--models-dir", models_dir,
        "--detector", "scrfd_2.5g", "--classifier", "enet_b0_8", "--out", out,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    frames = json_lines(proc.stdout)
    assert [f["frame"] for f in frames] == [0, 1, 2, 3, 4]
    assert [f["timestamp_s"] for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(len(f["faces"]) == 2 for f in frames)
    assert all(face["emotion"] for f in frames for face in f["faces"])
    cap = cv2.VideoCapture(str(out))
    shapes = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    cap.release()
    assert shapes == [(328, 400, 3)] * 5


def test_detector_alone_runs_detection_only(tmp_path: Path, images: Path, models_dir: Path) -> None:
    proc = edged(
        "analyze", images / "s_l.jpg", "--models-dir", models_dir, "--detector", "yunet",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (obj,) = json_lines(proc.stdout)
    assert obj["models"] == {"detector": "yunet", "classifier": None}
    assert obj["providers"] == {"yunet": "cpu"}
    assert len(obj["faces"]) == 2
    for face in obj["faces"]:
        assert face["emotion"] is None and face["confidence"] is None and face["scores"] == {}


def test_unreadable_image_is_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a picture")
    proc = edged("analyze", bad, "--models-dir", models_dir, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"error: {bad}: cannot decode it as an image" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_installed_model_names_the_files_and_the_fix(tmp_path: Path, images: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    proc = edged(
        "analyze", images / "s_l.jpg", "--models-dir", empty, "--phase", "sota_phase1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "no usable face detector" in proc.stderr
    assert str(empty / "scrfd/scrfd_10g_bnkps.onnx") in proc.stderr
    assert "edged models fetch scrfd_10g" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_provider_is_refused(tmp_path: Path, images: Path, models_dir: Path) -> None:
    proc = edged(
        "analyze", images / "s_l.jpg", "--models-dir", models_dir, "--providers", "cpu,gpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "unknown provider(s) gpu" in proc.stderr


def test_a_directory_is_a_clear_error_naming_it(tmp_path: Path, models_dir: Path) -> None:
    folder = tmp_path / "photos.jpg"
    folder.mkdir()
    proc = edged("analyze", folder, "--models-dir", models_dir, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"error: {folder}: is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_that_cannot_be_read_is_a_capture_error_naming_it(tmp_path: Path) -> None:
    # As root no permission bit stops a read; a directory is an unreadable path for anyone.
    with pytest.raises(CaptureError, match=re.escape(f"{tmp_path}: cannot read it: ")):
        _read_image(tmp_path)


def _laplacian_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_blur_hides_every_face_of_the_annotated_copy_so_the_detector_finds_none(
    tmp_path: Path, images: Path, models_dir: Path
) -> None:
    out = tmp_path / "blurred.png"
    args = ("--models-dir", models_dir, "--detector", "scrfd_2.5g", "--classifier", "enet_b0_8")
    proc = edged("analyze", images / "s_l.jpg", *args, "--out", out, "--blur", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (obj,) = json_lines(proc.stdout)
    assert len(obj["faces"]) == 2, "the JSON is the same as without --blur"
    original = cv2.imread(str(images / "s_l.jpg"))
    blurred = cv2.imread(str(out))
    assert original is not None and blurred is not None and blurred.shape == original.shape
    for face in obj["faces"]:
        x, y, w, h = (round(v) for v in face["bbox"])
        inner = (slice(y + h // 6, y + h - h // 6), slice(x + w // 6, x + w - w // 6))
        assert _laplacian_var(blurred[inner]) < 0.1 * _laplacian_var(original[inner]), face
    # The same detector, run on the shared copy, no longer finds a face in it.
    again = edged("analyze", out, "--models-dir", models_dir, "--detector", "scrfd_2.5g",
                  cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    (seen,) = json_lines(again.stdout)
    assert seen["faces"] == [], seen["faces"]


def test_blur_without_out_is_refused_saying_what_it_needs(
    tmp_path: Path, images: Path, models_dir: Path
) -> None:
    proc = edged("analyze", images / "s_l.jpg", "--models-dir", models_dir, "--blur", cwd=tmp_path)
    assert proc.returncode == 1 and "--out" in proc.stderr, proc.stderr
