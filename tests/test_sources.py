"""The one source parser (``edged.sources``): what capture opens is what the remote guard
checked. The guard once let any ``rtsp://``/``http(s)://`` string through before looking
for ``!``, and capture then ran ``rtsp://127.0.0.1:1/x ! videoconvert ! appsink`` as a
GStreamer pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged import sources
from edged.errors import ConfigError
from edged.runtime.capture import parse_source


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://127.0.0.1:1/x ! videoconvert ! appsink",
        "http://127.0.0.1/x ! filesink location=/tmp/owned",
        "https://cam.lan/mjpeg!appsink",
        "rtsp://cam.lan/x appsink",
        "rtsp://cam.lan/x\n! appsink",
        " rtsp://cam.lan/x",
        "rtsp://cam.lan/x\x00",
        "rtsp:///no-host",
        "http://[::1/x",
        "http://cam.lan:port/x",
        "rtmp://cam.lan/live",
        "udp://0.0.0.0:5000",
        "file:///etc/passwd",
        "/dev/sda",
        "/dev/video0 ",
        "videotestsrc ! appsink",
        "²",
        "",
    ],
)
def test_remote_sources_that_are_not_exactly_a_device_url_or_media_file_are_refused(
    tmp_path: Path, source: str
) -> None:
    with pytest.raises(ConfigError):
        sources.check_remote(source, tmp_path)


@pytest.mark.parametrize(
    "source",
    ["0", "12", "/dev/video3", "rtsp://admin:pw@10.0.0.5:554/h264", "https://cam.lan/mjpeg"],
)
def test_devices_and_plain_urls_are_allowed_remotely_and_parse_as_such(
    tmp_path: Path, source: str
) -> None:
    sources.check_remote(source, None)
    assert parse_source(source).kind in ("index", "device", "url")


def test_files_are_allowed_remotely_only_under_the_media_dir_symlinks_resolved(
    tmp_path: Path,
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(b"")
    (media / "escape.mp4").symlink_to("/etc/passwd")
    sources.check_remote(str(media / "clip.mp4"), media)
    sources.check_remote(f"file://{media / 'clip.mp4'}", media)
    for bad in (str(media / "escape.mp4"), str(media / ".." / "x.mp4"), "clip.mp4"):
        with pytest.raises(ConfigError, match="remote_media_dir"):
            sources.check_remote(bad, media)
    with pytest.raises(ConfigError, match="remote_media_dir"):
        sources.check_remote(str(media / "clip.mp4"), None)


def test_a_refusal_does_not_echo_the_password_of_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        sources.check_remote("rtsp://admin:hunter2-x@cam.lan/x appsink", tmp_path)
    assert "hunter2-x" not in str(err.value)


def test_parse_refuses_control_characters_and_non_ascii_digits() -> None:
    with pytest.raises(ConfigError, match="control characters"):
        sources.parse("/dev/video0\x00")
    assert sources.parse("²").kind == "file"  # not int("²"), which raised ValueError


_pieces = st.sampled_from(
    [
        "rtsp://",
        "rtsps://",
        "http://",
        "https://",
        "HTTP://",
        "file://",
        "127.0.0.1",
        "cam.lan",
        ":554",
        "/x",
        "@",
        "admin:pw@",
        "!",
        " ! ",
        "appsink",
        "videoconvert",
        "filesrc location=",
        " ",
        "\t",
        "\n",
        "\x00",
        "\x1b",
        "/dev/video0",
        "/dev/",
        "..",
        "/",
        "0",
        "?",
        "#",
        "[",
        "]",
        "%21",
        "\u00a0",
        "\u2028",
    ]
)


@settings(max_examples=2000, deadline=None)
@given(
    text=st.one_of(
        st.lists(_pieces, min_size=1, max_size=10).map("".join),
        st.text(max_size=60),
        st.tuples(st.lists(_pieces, max_size=4).map("".join), st.text(max_size=20)).map("".join),
    )
)
def test_fuzz_a_source_the_remote_guard_accepts_is_never_a_pipeline(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    media = Path("/srv/edged-media")
    try:
        sources.check_remote(text, media)
    except ConfigError as exc:
        if re.match(r"[A-Za-z]+://admin:pw@", text):  # a URL's password is never echoed
            assert text.split("@", 1)[0] + "@" not in str(exc)
        return
    parsed = parse_source(text)  # exactly what capture would open
    assert parsed.kind != "gstreamer" and "!" not in text
    if parsed.kind == "url":
        assert text.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https")
        assert not any(c.isspace() or ord(c) < 0x20 for c in text)
    elif parsed.kind == "file":
        assert Path(str(parsed.target)).resolve().is_relative_to(media)
    else:
        assert parsed.kind in ("index", "device")
        assert text.isascii() and (text.isdigit() or text.startswith("/dev/video"))


def test_a_camera_that_cannot_open_a_url_reports_the_error_without_its_password() -> None:
    from edged.config import CameraSettings
    from edged.runtime.capture import Camera

    cam = Camera(
        CameraSettings(id="c", source="rtsp://admin:cam-pw-8@127.0.0.1:1/x", reconnect_min_s=5),
        timeout_s=2.0,
    )
    cam.start()
    try:
        assert cam.wait_for_state("reconnecting", timeout=30)
        error = str(cam.stats()["last_error"])
        assert "cam-pw-8" not in error and "127.0.0.1" in error, error
    finally:
        cam.stop()


def test_a_url_glued_to_the_end_of_another_is_redacted_too() -> None:
    """Found by the fuzz test: the first URL's authority used to swallow the next scheme,
    so the second URL's password was shown in the error message."""
    text = "rtsp://admin:pw@/dev/video0rtsp://rtsp://admin:pw@"
    assert "pw" not in sources.redact(text)
    assert sources.redact("rtsp://a:b@c rtsp://d:e@f") == "rtsp://a:***@c rtsp://d:***@f"
