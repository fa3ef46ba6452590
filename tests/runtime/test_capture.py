"""Capture from real video files written here with cv2.VideoWriter; real failures only
(a file that is missing, appears later, or is deleted while a camera loops over it)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog

from edged.config import CameraSettings
from edged.runtime.capture import (
    Camera,
    Frame,
    gstreamer_available,
    list_video_devices,
    parse_source,
    probe,
)
from edged.sources import redact as redact_source

W, H = 96, 64
#: Generous bound for conditions that normally hold within milliseconds (a loaded CI box).
WAIT = 20.0


def write_video(path: Path, frames: int = 24, fps: float = 50.0) -> Path:
    """An MJPG .avi whose frame i (< 32) has a left band of grey level 8*i and i drawn."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, :32] = 8 * i
        cv2.putText(img, str(i), (40, 44), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        writer.write(img)
    writer.release()
    return path


def number(frame: Frame) -> int:
    """The frame number the video writer put into the image."""
    return round(float(frame.image[8:56, 4:28].mean()) / 8)


def settings(source: Path | str, **kw: Any) -> CameraSettings:
    base: dict[str, Any] = {
        "id": "cam",
        "source": str(source),
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    base.update(kw)
    return CameraSettings(**base)


@pytest.fixture
def cameras() -> Iterator[list[Camera]]:
    """Cameras a test starts; all stopped afterwards, even on failure."""
    started: list[Camera] = []
    yield started
    for cam in started:
        cam.stop(timeout=5)


def start(cameras: list[Camera], cam_settings: CameraSettings) -> Camera:
    cam = Camera(cam_settings)
    cameras.append(cam)
    cam.start()
    return cam


def take(cam: Camera, n: int) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(n):
        frame = cam.wait(WAIT)
        assert frame is not None, f"no frame after {len(frames)}: {cam.stats()}"
        frames.append(frame)
    return frames


def test_file_read_as_fast_as_consumed_delivers_every_frame_in_order_then_finishes(
    tmp_path: Path, cameras: list[Camera]
) -> None:
    video = write_video(tmp_path / "v.avi", frames=24)
    cam = start(cameras, settings(video, realtime=False))
    frames = take(cam, 24)
    assert [number(f) for f in frames] == list(range(24))
    assert [f.seq for f in frames] == list(range(24))
    assert cam.wait_for_state("finished", timeout=WAIT)
    assert cam.wait(0.1) is None
    stats = cam.stats()
    assert stats["frames_in"] == 24 and stats["dropped_frames"] == 0
    assert (stats["width"], stats["height"]) == (W, H)
    assert all(f.camera == "cam" and f.image.shape == (H, W, 3) for f in frames)


def test_realtime_file_is_paced_at_its_native_fps(tmp_path: Path, cameras: list[Camera]) -> None:
    video = write_video(tmp_path / "v.avi", frames=20, fps=50.0)
    cam = start(cameras, settings(video, realtime=True))
    frames = take(cam, 20)
    # 19 intervals of 1/50 s: a paced source cannot deliver them faster (pacing only waits).
    span = frames[-1].ts - frames[0].ts
    assert span >= 19 / 50 * 0.95
    assert [number(f) for f in frames] == list(range(20))


def test_unpaced_file_is_not_held_to_its_native_fps(tmp_path: Path, cameras: list[Camera]) -> None:
    # The same file at a nominal 2 fps: realtime would need 9.5 s for these 20 frames.
    video = write_video(tmp_path / "slow.avi", frames=20, fps=2.0)
    cam = start(cameras, settings(video, realtime=False))
    frames = take(cam, 20)
    assert frames[-1].ts - frames[0].ts < 19 / 2


def test_slow_consumer_gets_only_the_newest_frame_and_drops_are_counted(
    tmp_path: Path, cameras: list[Camera]
) -> None:
    video = write_video(tmp_path / "v.avi", frames=24, fps=100.0)
    cam = start(cameras, settings(video, realtime=True))
    # Nobody takes frames until the file is over: only the last one is left.
    assert cam.wait_for_state("finished", timeout=WAIT)
    last = cam.latest()
    assert last is not None and number(last) == 23 and last.seq == 23
    assert cam.latest() is None
    stats = cam.stats()
    assert stats["frames_in"] == 24
    assert stats["dropped_frames"] == 23


def test_taken_plus_dropped_accounts_for_every_frame_read(
    tmp_path: Path, cameras: list[Camera]
) -> None:
    video = write_video(tmp_path / "v.avi", frames=30, fps=100.0)
    put = threading.Condition()
    newest = [-1]  # seq of the newest frame the camera put into its mailbox

    def on_frame(frame: Frame) -> None:
        with put:
            newest[0] = frame.seq
            put.notify_all()

    def camera_put(seq: int) -> bool:
        with put:
            return put.wait_for(lambda: newest[0] >= seq, WAIT)

    cam = Camera(settings(video, realtime=True), on_frame=on_frame)
    cameras.append(cam)
    cam.start()
    taken: list[Frame] = []
    # A consumer always one frame behind, by events rather than by sleeping: after taking
    # frame k it lets the camera put k+1 and k+2 before taking again, so k+1 is overwritten
    # unseen. A realtime camera never waits for its consumer, so this cannot block it.
    # wait() returns None once the camera finished and its last frame was taken.
    while (frame := cam.wait(WAIT)) is not None:
        taken.append(frame)
        assert camera_put(min(frame.seq + 2, 29)), cam.stats()
    stats = cam.stats()
    assert stats["state"] == "finished"
    seqs = [f.seq for f in taken]
    assert seqs == sorted(seqs) and seqs[-1] == 29
    # Each take before frame 28 skipped at least one frame.
    assert all(b - a >= 2 for a, b in itertools.pairwise(seqs) if a < 28)
    assert 0 < stats["dropped_frames"] == 30 - len(taken)
    assert len(taken) + stats["dropped_frames"] == stats["frames_in"] == 30


def test_loop_rewinds_at_end_of_file(tmp_path: Path, cameras: list[Camera]) -> None:
    video = write_video(tmp_path / "v.avi", frames=10)
    cam = start(cameras, settings(video, realtime=False, loop=True))
    frames = take(cam, 25)
    assert [number(f) for f in frames] == [*range(10), *range(10), *range(5)]
    assert [f.seq for f in frames] == list(range(25))
    assert cam.state == "running"
    assert cam.stats()["reconnects"] == 0


def test_missing_file_reconnects_with_backoff_and_recovers_when_it_appears(
    tmp_path: Path, cameras: list[Camera]
) -> None:
    video = tmp_path / "later.avi"
    with structlog.testing.capture_logs() as logs:
        cam = start(cameras, settings(video, realtime=False, loop=True))
        assert cam.wait_for_state("reconnecting", timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while cam.stats()["reconnects"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    stats = cam.stats()
    assert stats["state"] == "reconnecting"
    assert "does not exist" in stats["last_error"]
    assert stats["last_frame_age_s"] is None and stats["fps_in"] == 0.0
    retries = [e for e in logs if e["event"] == "camera_reconnect"]
    assert [e["attempt"] for e in retries[:3]] == [1, 2, 3]
    # Exponential with +-20 % jitter, capped at reconnect_max_s.
    assert 0.04 <= retries[0]["delay_s"] <= 0.06
    assert 0.08 <= retries[1]["delay_s"] <= 0.12
    assert all(e["delay_s"] <= 0.2 for e in retries)

    write_video(tmp_path / "tmp.avi", frames=10).rename(video)
    frame = cam.wait(WAIT)
    assert frame is not None
    assert cam.state == "running"
    assert cam.stats()["last_error"] is None


def test_one_camera_dying_does_not_stop_another(tmp_path: Path, cameras: list[Camera]) -> None:
    good = write_video(tmp_path / "good.avi", frames=10)
    doomed = write_video(tmp_path / "doomed.avi", frames=10)
    a = start(cameras, settings(good, id="a", realtime=True, loop=True))
    b = start(cameras, settings(doomed, id="b", realtime=True, loop=True))
    take(a, 3)
    take(b, 3)
    doomed.unlink()  # b's next rewind cannot reopen it
    assert b.wait_for_state("reconnecting", timeout=WAIT)
    b.latest()  # discard what b produced before it died
    a.latest()
    after = take(a, 15)  # a keeps delivering (and loops) while b is down
    assert len({number(f) for f in after}) == 10
    assert a.state == "running"
    assert b.state == "reconnecting" and b.latest() is None
    assert b.stats()["last_error"] == f"video file {doomed} does not exist"
    # b recovers when its file is back.
    write_video(tmp_path / "tmp.avi", frames=10).rename(doomed)
    assert b.wait(WAIT) is not None
    assert b.stats()["state"] == "running"


def test_stop_releases_a_camera_blocked_on_an_untaken_frame(
    tmp_path: Path, cameras: list[Camera]
) -> None:
    video = write_video(tmp_path / "v.avi", frames=10)
    cam = Camera(settings(video, realtime=False))
    cam.start()
    assert cam.wait_for_state("running", timeout=WAIT)
    assert cam.stop(timeout=5)
    assert cam.state == "stopped"


def test_stats_report_fps_in_while_running(tmp_path: Path, cameras: list[Camera]) -> None:
    video = write_video(tmp_path / "v.avi", frames=30, fps=50.0)
    cam = start(cameras, settings(video, realtime=True, loop=True))
    take(cam, 20)
    stats = cam.stats()
    assert stats["state"] == "running"
    assert 0 < stats["fps_in"] <= 50 * 1.1  # paced: never faster than the file's rate
    assert 0 <= stats["last_frame_age_s"] < WAIT


def test_on_frame_callback_sees_each_new_frame(tmp_path: Path, cameras: list[Camera]) -> None:
    video = write_video(tmp_path / "v.avi", frames=12)
    seen: list[int] = []
    cam = Camera(settings(video, realtime=False), on_frame=lambda f: seen.append(f.seq))
    cameras.append(cam)
    cam.start()
    take(cam, 12)
    assert cam.wait_for_state("finished", timeout=WAIT)
    assert seen == list(range(12))


def test_probe_reports_resolution_and_fps_of_a_video_file(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", frames=5, fps=30.0)
    result = probe(str(video), timeout=WAIT)
    assert result.ok and result.error is None
    assert (result.width, result.height) == (W, H)
    assert result.fps == pytest.approx(30.0)
    assert result.kind == "file"
    assert result.grab_s is not None and result.grab_s >= 0


def test_probe_of_a_missing_device_says_so() -> None:
    result = probe("/dev/video99", timeout=5)
    assert not result.ok
    assert result.error == "no such device /dev/video99"
    assert result.as_dict()["kind"] == "device"


def test_probe_of_a_missing_camera_index_names_the_device_node() -> None:
    result = probe("99", timeout=5)
    assert not result.ok and result.kind == "index"
    assert result.error is not None and "/dev/video99" in result.error


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV build has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_support_fails_clearly() -> None:
    result = probe("videotestsrc num-buffers=1 ! videoconvert ! appsink", timeout=5)
    assert not result.ok and result.kind == "gstreamer"
    assert result.error is not None and "no GStreamer support" in result.error


@pytest.mark.parametrize(
    ("source", "kind", "target"),
    [
        ("0", "index", 0),
        (" 2 ", "index", 2),
        ("/dev/video0", "device", "/dev/video0"),
        ("rtsp://cam.lan:554/stream1", "url", "rtsp://cam.lan:554/stream1"),
        ("https://cam.lan/mjpeg", "url", "https://cam.lan/mjpeg"),
        ("nvarguscamerasrc ! nvvidconv ! appsink", "gstreamer", None),
        ("/srv/video/lobby.mp4", "file", "/srv/video/lobby.mp4"),
        ("file:///srv/video/lobby.mp4", "file", "/srv/video/lobby.mp4"),
        ("clips/a!b.mp4", "gstreamer", None),  # '!' means a pipeline; rename such files
    ],
)
def test_parse_source_classifies_each_kind(source: str, kind: str, target: object) -> None:
    parsed = parse_source(source)
    assert parsed.kind == kind
    if target is not None:
        assert parsed.target == target


def test_url_passwords_are_redacted_for_logs() -> None:
    assert redact_source("rtsp://admin:s3cret@10.0.0.5:554/h264") == (
        "rtsp://admin:***@10.0.0.5:554/h264"
    )
    assert redact_source("rtsp://10.0.0.5/h264") == "rtsp://10.0.0.5/h264"
    assert redact_source("/dev/video0") == "/dev/video0"


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        # The user info ends at the LAST '@' of the authority: the whole password goes.
        ("rtsp://admin:p@ss@w0rd@cam.lan:554/s", "rtsp://admin:***@cam.lan:554/s"),
        # Host and port verbatim, even where urlsplit would change or reject them.
        ("rtsp://u:pw@[fe80::1]:554/s", "rtsp://u:***@[fe80::1]:554/s"),
        ("rtsp://u:pw@Cam.LAN:port/s", "rtsp://u:***@Cam.LAN:port/s"),
        ("rtsp://u:pw@cam:0/s", "rtsp://u:***@cam:0/s"),
        # An '@' in the path is not user info.
        ("rtsp://cam.lan/live@main", "rtsp://cam.lan/live@main"),
        ("rtsp://admin@cam.lan/s", "rtsp://admin@cam.lan/s"),
        # Over HTTP(S) a user name alone is a token (https://TOKEN@host): hidden.
        ("https://ghp_abc123@mirror.lan/m.onnx", "https://***@mirror.lan/m.onnx"),
        ("HTTP://tok@cam/video.mjpg", "HTTP://***@cam/video.mjpg"),
        # Inside a GStreamer pipeline (Jetson rtspsrc) and in IP-camera CGI query strings.
        (
            "rtspsrc location=rtsp://op:s3@cr3t@cam/s latency=0 ! decodebin ! appsink",
            "rtspsrc location=rtsp://op:***@cam/s latency=0 ! decodebin ! appsink",
        ),
        (
            "http://cam/video.cgi?user=op&pwd=s3cret&res=1",
            "http://cam/video.cgi?user=op&pwd=***&res=1",
        ),
        ("https://mirror.lan/m?TOKEN=abc#x", "https://mirror.lan/m?TOKEN=***#x"),
        ("clips/a?pwd=1.mp4", "clips/a?pwd=1.mp4"),  # a file path is shown as written
    ],
)
def test_redaction_hides_every_credential_form_and_keeps_the_rest(source: str, shown: str) -> None:
    assert redact_source(source) == shown


def test_list_video_devices_sorts_numerically(tmp_path: Path) -> None:
    for name in ("video10", "video2", "video0", "null"):
        (tmp_path / name).touch()
    assert list_video_devices(tmp_path) == [
        str(tmp_path / "video0"),
        str(tmp_path / "video2"),
        str(tmp_path / "video10"),
    ]
