"""Camera ``source`` strings: the one parser, the redaction of secrets, the remote rule.

Capture, the config validation and the daemon's remote-config guard all ask this module
what a source is, so they can never disagree (the guard once let any ``rtsp://...`` string
through before looking for ``!``, while capture treated ``rtsp://x ! appsink`` as a
GStreamer pipeline). It imports neither OpenCV nor the config, so the config can use it
without an import circle and ``edged check-config`` stays fast.

Kinds, from the ``source`` string of a ``[[cameras]]`` table:

* ``"0"`` — a device index (ASCII digits);
* ``/dev/...`` — a device path (V4L2);
* ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://`` — a stream;
* a string containing ``!`` — a GStreamer pipeline (checked before the URL schemes: a URL
  followed by ``! element`` is a pipeline);
* ``file://`` URLs and anything else — a video file.

What a remote ``config/set`` may name (:func:`check_remote`) is narrower: a device index,
``/dev/videoN``, an ``rtsp(s)://`` or ``http(s)://`` URL that is a URL and nothing else, or
an absolute file path under ``[mqtt] remote_media_dir``. Never a pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from edged.errors import ConfigError

SourceKind = Literal["index", "device", "url", "gstreamer", "file"]

#: Schemes that capture opens as network streams (FFmpeg).
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
#: Schemes a remote change may use for a camera.
REMOTE_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")

_INDEX = re.compile(r"[0-9]{1,6}")
_VIDEO_DEVICE = re.compile(r"/dev/video[0-9]{1,4}")
#: C0 controls and DEL. Tab and newlines are allowed in a local source (a GStreamer
#: pipeline written over several lines); a remote URL may contain no whitespace at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ParsedSource:
    """What a source string is and what capture opens for it (the index as an int)."""

    kind: SourceKind
    target: str | int


def check_text(source: str) -> None:
    """Refuse what no backend can be given: empty, NUL or other control characters.

    Raised as :class:`ConfigError`; the config validation reports it at the camera's key.
    """
    if not source.strip():
        raise ConfigError("source must not be empty")
    if _CONTROL.search(source):
        raise ConfigError("source must not contain control characters (such as a NUL byte)")


def parse(source: str) -> ParsedSource:
    """Classify a source string (see the module doc); :class:`ConfigError` if it is none."""
    check_text(source)
    text = source.strip()
    if _INDEX.fullmatch(text):
        return ParsedSource("index", int(text))
    if "!" in text:
        return ParsedSource("gstreamer", text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        return ParsedSource("url", text)
    if scheme == "file":
        try:
            path = urlsplit(text).path
        except ValueError as exc:
            raise ConfigError(f"source {redact(text)!r} is not a valid file:// URL") from exc
        if not path:
            raise ConfigError(f"source {redact(text)!r} names no file")
        return ParsedSource("file", path)
    if text.startswith("/dev/"):
        return ParsedSource("device", text)
    return ParsedSource("file", text)


def check_remote(source: str, media_dir: Path | None) -> None:
    """Raise :class:`ConfigError` unless a remote change may point a camera at ``source``.

    The rule is an allow-list on the raw string (nothing stripped): a device index,
    ``/dev/videoN``, a URL of :data:`REMOTE_URL_SCHEMES` with a host and no whitespace,
    control character or ``!``, or an absolute file path (or ``file://`` URL) that resolves,
    symlinks followed, under ``media_dir``. Whatever passes is also classified by
    :func:`parse` as that same kind, so capture opens exactly what was checked.
    """
    shown = redact(source)
    try:
        parsed = parse(source)
    except ConfigError as exc:
        raise ConfigError(f"config/set: camera source {shown!r}: {exc}") from exc
    if parsed.kind == "gstreamer":
        raise ConfigError("config/set may not set a GStreamer pipeline as a camera source")
    if parsed.kind == "index" and _INDEX.fullmatch(source):
        return
    if parsed.kind == "device" and _VIDEO_DEVICE.fullmatch(source):
        return
    if parsed.kind == "url":
        _check_remote_url(source, shown)
        return
    if parsed.kind == "file" and source == source.strip():
        path = Path(str(parsed.target))
        if media_dir is not None and path.is_absolute():
            try:
                inside = path.resolve().is_relative_to(media_dir.resolve())
            except (OSError, ValueError, RuntimeError):  # a loop of symlinks, say
                inside = False
            if inside:
                return
        raise ConfigError(
            f"config/set may not read the file {shown!r}: file sources must be absolute "
            "paths under [mqtt] remote_media_dir"
        )
    raise ConfigError(
        f"config/set may not set the camera source {shown!r}: a remote change may name a "
        "device index, /dev/videoN, an rtsp(s):// or http(s):// URL, or a file under "
        "[mqtt] remote_media_dir"
    )


def _check_remote_url(source: str, shown: str) -> None:
    scheme = source.split("://", 1)[0].lower()
    if scheme not in REMOTE_URL_SCHEMES:
        raise ConfigError(
            f"config/set may not set the camera source {shown!r}: remote URLs must be "
            f"{', '.join(s + '://' for s in REMOTE_URL_SCHEMES)}"
        )
    if any(c.isspace() for c in source) or "!" in source:
        raise ConfigError(f"config/set: camera source {shown!r} must be a URL and nothing else")
    try:
        parts = urlsplit(source)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"config/set: camera source {shown!r} is not a valid URL") from exc
    if not host:
        raise ConfigError(f"config/set: camera source {shown!r} has no host")


#: A URL's scheme and authority, also inside a GStreamer pipeline (``location=rtsp://...``).
#: The authority ends where RFC 3986 (and FFmpeg's ``av_url_split``) end it, or at a space
#: or quote, which cannot be part of it in a pipeline string.
_URL_AUTHORITY = re.compile(
    # The authority ends where another ``scheme://`` begins, so a URL glued to the end of
    # another (``…/video0rtsp://user:pw@``) is matched, and redacted, on its own.
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
    r"(?P<authority>(?:(?![A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s\"'])*)"
)
#: Query parameters that carry credentials on cheap IP cameras (``video.cgi?user=a&pwd=b``)
#: and token-authenticated mirrors.
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|api_key|apikey|key"
    r"|secret|auth|signature|sig)=)(?P<value>[^&;#\s\"']*)",
    re.IGNORECASE,
)


def redact(source: str) -> str:
    """The text with URL passwords, HTTP user-info tokens and secret query values
    replaced by ``***``.

    Sources end up in logs, ``/health``, ``edged config show`` and error messages. The user
    info is split from the host at the *last* ``@`` of the authority, as URL parsers and
    FFmpeg do, so a password containing ``@`` is hidden whole. Host and port are kept
    verbatim (case, IPv6 brackets, even an invalid port): this must never fail on a string
    it cannot parse, because it runs on the error paths that report such strings. It works
    on any text, so a whole error message can be passed through it.
    """

    def _authority(match: re.Match[str]) -> str:
        userinfo, at, hostport = match["authority"].rpartition("@")
        if not at:
            return match[0]
        if ":" not in userinfo:
            # a user name alone is kept for RTSP & co (``admin@cam``), but over HTTP it is how
            # tokens are passed (``https://TOKEN@host``), so there it is hidden
            if match["scheme"].lower() in ("http://", "https://"):
                return f"{match['scheme']}***@{hostport}"
            return match[0]
        user = userinfo.split(":", 1)[0]
        return f"{match['scheme']}{user}:***@{hostport}"

    if "://" not in source:
        return source  # a device, index or file path: shown as written
    source = _URL_AUTHORITY.sub(_authority, source)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***" if m["value"] else m[0], source)


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string inside it (lists, tables)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
