"""Camera capture: one daemon thread per camera, a one-slot mailbox with the newest frame.

OpenCV's ``read()`` blocks (a V4L2 ``select``, an RTSP socket, a decoder), so it never runs
on the event loop: every :class:`Camera` owns a thread that opens the source, reads frames
and puts each into a one-slot mailbox. The pipeline takes whatever is newest with
:meth:`Camera.latest` (or blocks in :meth:`Camera.wait` on a worker thread). A frame that is
overwritten before anyone took it is *dropped* and counted, never queued: queues in front
of a slower pipeline only add latency, and an emotion of two seconds ago is worth nothing.

Sources are classified by :func:`edged.sources.parse` (the one parser the config and the
remote guard use too; its module doc lists the kinds); this module only picks the OpenCV
API for each and opens it. Network streams get open/read timeouts so a dead stream fails
instead of hanging; a GStreamer pipeline needs an OpenCV built with GStreamer (pip's wheels
are not: that is reported as such). A file with ``realtime=True`` is paced at its native
fps as a camera would deliver it; ``realtime=False`` reads the next frame only once the
previous one was taken (as fast as the pipeline goes, nothing dropped). ``loop=True``
reopens it at the end; otherwise the end of the file ends the camera in state ``finished``.

A source that cannot be opened or stops delivering goes to ``reconnecting`` and is reopened
with exponential backoff and jitter (``reconnect_min_s`` doubling up to ``reconnect_max_s``),
logging ``camera_reconnect``. Each camera has its own thread, so one dead camera never stalls
another.

States: ``starting`` → ``running`` ⇄ ``reconnecting`` → ``finished`` (file end) or
``stopped`` (:meth:`Camera.stop`).
"""

from __future__ import annotations

import functools
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import structlog

from edged import sources
from edged.config import CameraSettings
from edged.errors import CaptureError, ConfigError
from edged.sources import SourceKind

log = structlog.get_logger(__name__)

CameraState = Literal["starting", "running", "reconnecting", "finished", "stopped"]
Image = npt.NDArray[np.uint8]

#: Used when a file reports no usable frame rate (some containers store 0 or 90000).
_DEFAULT_FILE_FPS = 25.0
#: fps_in is the rate over the last this many frames. A window, not an average of single
#: intervals: the paced file reader delivers a late frame's successor at once, and one short
#: interval made an interval average read 56 fps on a 50 fps file; over N frames pacing
#: bounds the rate by N/(N-1) of the source's.
_FPS_WINDOW = 30


@dataclass(frozen=True)
class Frame:
    """One captured image. ``ts`` is ``time.monotonic()`` when it was captured (for ages and
    dwell), ``wall_ts`` the epoch time (for event timestamps), ``seq`` counts the camera's
    frames from 0 across reconnects (a gap means frames were dropped)."""

    image: Image
    ts: float
    wall_ts: float
    seq: int
    camera: str


@dataclass(frozen=True)
class Source:
    """A parsed ``source`` string: what it is, what OpenCV is given, through which API."""

    kind: SourceKind
    target: str | int
    api: int

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@functools.lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    """Whether this OpenCV build has the GStreamer video I/O backend."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is not None and match.group(1).upper().startswith("YES")


def parse_source(source: str) -> Source:
    """Classify a ``source`` string (:func:`edged.sources.parse`) and pick its OpenCV API.

    Raises :class:`~edged.errors.ConfigError` on a string that is no source at all (empty,
    control characters); validated settings never hold one.
    """
    parsed = sources.parse(source)
    linux = sys.platform.startswith("linux")
    api = {
        "index": cv2.CAP_V4L2 if linux else cv2.CAP_ANY,
        "device": cv2.CAP_V4L2 if linux else cv2.CAP_ANY,
        "url": cv2.CAP_FFMPEG,
        "gstreamer": cv2.CAP_GSTREAMER,
        "file": cv2.CAP_ANY,
    }[parsed.kind]
    return Source(parsed.kind, parsed.target, api)


def open_capture(
    source: str | Source,
    *,
    width: int = 0,
    height: int = 0,
    timeout_s: float = 10.0,
) -> cv2.VideoCapture:
    """Open a source, or raise :class:`CaptureError` saying why it cannot be opened.

    ``timeout_s`` bounds opening and each read of network streams (FFmpeg); ``width`` and
    ``height`` are requests to devices and streams (the driver may choose another size).
    """
    src = parse_source(source) if isinstance(source, str) else source
    shown = sources.redact(str(src.target))
    if src.kind == "gstreamer" and not gstreamer_available():
        raise CaptureError(
            f"source {shown!r} is a GStreamer pipeline, but this OpenCV build has no "
            "GStreamer support (pip's opencv-python wheels have none); use an OpenCV built "
            "with GStreamer, e.g. JetPack's system python3-opencv on a Jetson"
        )
    if src.kind == "file" and not Path(str(src.target)).is_file():
        raise CaptureError(f"video file {shown} does not exist")
    if src.kind == "device" and not Path(str(src.target)).exists():
        raise CaptureError(f"no such device {shown}")
    if src.kind == "index" and sys.platform.startswith("linux"):
        node = Path(f"/dev/video{src.target}")
        if not node.exists():
            raise CaptureError(f"no such device {node} (camera index {src.target})")

    params: list[int] = []
    if src.kind == "url":
        ms = max(int(timeout_s * 1000), 1)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    try:
        cap = cv2.VideoCapture(src.target, src.api, params)
    except cv2.error as exc:
        raise CaptureError(f"cannot open {src.kind} {shown}: {exc}") from exc
    if not cap.isOpened():
        cap.release()
        raise CaptureError(f"cannot open {src.kind} {shown}")
    if src.kind in ("index", "device", "url"):
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if src.kind in ("index", "device"):
        # Fewer driver buffers: the newest frame is what we want, not a queue of old ones.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


def _file_fps(cap: cv2.VideoCapture) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if 0.0 < fps <= 1000.0 else _DEFAULT_FILE_FPS


class Camera:
    """One source read on its own daemon thread into a one-slot newest-frame mailbox.

    ``on_frame`` (optional) is called on the capture thread after each new frame is in the
    mailbox, e.g. ``lambda f: loop.call_soon_threadsafe(event.set)``; it must be quick.
    """

    def __init__(
        self,
        settings: CameraSettings,
        *,
        on_frame: Callable[[Frame], None] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.id = settings.id
        self.source = parse_source(settings.source)
        self._on_frame = on_frame
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        # Guarded by _cond:
        self._slot: Frame | None = None
        self._state: CameraState = "starting"
        self._seq = 0
        self._frames_in = 0
        self._dropped = 0
        self._reconnects = 0
        self._last_ts: float | None = None
        self._put_times: deque[float] = deque(maxlen=_FPS_WINDOW)
        self._width = 0
        self._height = 0
        self._last_error: str | None = None

    # -- consumer side --------------------------------------------------------------------

    def latest(self) -> Frame | None:
        """Take the newest frame not taken yet, or ``None``; never blocks."""
        with self._cond:
            frame, self._slot = self._slot, None
            if frame is not None:
                self._cond.notify_all()  # a non-realtime file reader waits for this
            return frame

    def wait(self, timeout: float | None = None) -> Frame | None:
        """Block until a frame is available (then take it), the camera ends, or timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._slot is not None or self._state in ("finished", "stopped"),
                timeout,
            )
            frame, self._slot = self._slot, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def wait_for_state(self, *states: CameraState, timeout: float | None = None) -> bool:
        """Block until the camera is in one of ``states``; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)

    @property
    def state(self) -> CameraState:
        with self._cond:
            return self._state

    def stats(self) -> dict[str, Any]:
        """A consistent snapshot: state, fps_in, frames_in, dropped_frames, last_frame_age_s,
        width, height, last_error, reconnects. ``fps_in`` is 0 unless running."""
        now = time.monotonic()
        with self._cond:
            running = self._state == "running"
            return {
                "state": self._state,
                "fps_in": self._fps_in() if running else 0.0,
                "frames_in": self._frames_in,
                "dropped_frames": self._dropped,
                "last_frame_age_s": None if self._last_ts is None else now - self._last_ts,
                "width": self._width,
                "height": self._height,
                "last_error": self._last_error,
                "reconnects": self._reconnects,
            }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the capture thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and release the source; ``False`` when the thread did not end
        within ``timeout`` (a read stuck in a driver; it releases when the read returns)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera_stop_timeout", camera=self.id, timeout_s=timeout)
                return False
        with self._cond:
            if self._state != "finished":
                self._set_state("stopped")
        return True

    # -- capture thread -------------------------------------------------------------------

    def _set_state(self, state: CameraState) -> None:
        """Change state; caller holds ``_cond``."""
        if state != self._state:
            self._state = state
            self._cond.notify_all()

    def _error(self, message: str) -> None:
        # Backend messages (OpenCV, FFmpeg) may quote the URL: /health shows this one.
        with self._cond:
            self._last_error = sources.redact(message)

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    cap = open_capture(
                        self.source,
                        width=self.settings.width,
                        height=self.settings.height,
                        timeout_s=self._timeout_s,
                    )
                except CaptureError as exc:
                    attempt += 1
                    self._backoff(attempt, str(exc))
                    continue
                try:
                    outcome, delivered = self._stream(cap)
                finally:
                    cap.release()
                if delivered:
                    attempt = 0
                if outcome == "stopped":
                    break
                if outcome == "eof" and delivered:
                    if not self.settings.loop:
                        with self._cond:
                            self._set_state("finished")
                        log.info("camera_finished", camera=self.id, frames=self._frames_in)
                        return
                    continue  # loop: reopen from the start
                reason = (
                    "file yielded no frames"
                    if self.source.is_file
                    else "source stopped delivering frames"
                )
                attempt += 1
                self._backoff(attempt, reason)
        except Exception as exc:  # the thread must never die silently
            log.exception("camera_thread_failed", camera=self.id)
            self._error(f"capture thread failed: {exc}")
            with self._cond:
                self._set_state("stopped")
        finally:
            with self._cond:
                if self._stop.is_set() and self._state != "finished":
                    self._set_state("stopped")

    def _backoff(self, attempt: int, error: str) -> None:
        s = self.settings
        error = sources.redact(error)
        base = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** min(attempt - 1, 30))
        delay = min(s.reconnect_max_s, base * self._rng.uniform(0.8, 1.2))
        with self._cond:
            self._last_error = error
            self._reconnects += 1
            # A gap while reconnecting is not an inter-frame interval: restart the window.
            self._put_times.clear()
            self._set_state("reconnecting")
        log.warning(
            "camera_reconnect",
            camera=self.id,
            source=sources.redact(s.source),
            attempt=attempt,
            delay_s=round(delay, 3),
            error=error,
        )
        self._stop.wait(delay)

    def _stream(self, cap: cv2.VideoCapture) -> tuple[Literal["eof", "failed", "stopped"], int]:
        """Read until the source ends or fails or stop is asked; returns (why, frames)."""
        is_file = self.source.is_file
        paced = is_file and self.settings.realtime
        lockstep = is_file and not self.settings.realtime
        period = 1.0 / _file_fps(cap) if paced else 0.0
        t0 = time.monotonic()
        delivered = 0
        log.info(
            "camera_opened",
            camera=self.id,
            source=sources.redact(self.settings.source),
            kind=self.source.kind,
            backend=cap.getBackendName(),
            fps=round(float(cap.get(cv2.CAP_PROP_FPS) or 0.0), 2),
        )
        while not self._stop.is_set():
            try:
                ok, image = cap.read()
            except cv2.error as exc:
                self._error(f"read failed: {exc}")
                return "failed", delivered
            if not ok or image is None:
                return ("eof" if is_file else "failed"), delivered
            if paced:
                due = t0 + delivered * period
                now = time.monotonic()
                if now > due + period:  # fell behind (slow decode): re-anchor, no burst
                    t0 = now - delivered * period
                elif due > now and self._stop.wait(due - now):
                    return "stopped", delivered
            elif lockstep:
                with self._cond:
                    self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
                if self._stop.is_set():
                    return "stopped", delivered
            self._put(np.asarray(image, dtype=np.uint8))
            delivered += 1
        return "stopped", delivered

    def _fps_in(self) -> float:
        """Frames per second over the window (caller holds the lock); 0 before 2 frames."""
        times = self._put_times
        span = times[-1] - times[0] if len(times) >= 2 else 0.0
        return round((len(times) - 1) / span, 2) if span > 0 else 0.0

    def _put(self, image: Image) -> None:
        now, wall = time.monotonic(), time.time()
        with self._cond:
            frame = Frame(image, now, wall, self._seq, self.id)
            self._seq += 1
            if self._slot is not None:
                self._dropped += 1
            self._slot = frame
            self._frames_in += 1
            self._put_times.append(now)
            self._last_ts = now
            self._height, self._width = int(image.shape[0]), int(image.shape[1])
            self._last_error = None
            self._set_state("running")
            self._cond.notify_all()
        if self._on_frame is not None:
            try:
                self._on_frame(frame)
            except Exception:
                log.exception("camera_on_frame_failed", camera=self.id)


@dataclass(frozen=True)
class ProbeResult:
    """What ``edged cameras probe`` reports for one source."""

    source: str
    kind: str
    ok: bool
    width: int = 0
    height: int = 0
    #: Frame rate the backend reports (None when it reports none).
    fps: float | None = None
    #: Seconds from opening to the first frame.
    grab_s: float | None = None
    backend: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(source: str, timeout: float = 10.0, *, width: int = 0, height: int = 0) -> ProbeResult:
    """Open ``source``, grab one frame, report size/fps/time or why it failed.

    The blocking open and read run on a helper thread; when they take longer than
    ``timeout`` the probe reports that and abandons the thread (a daemon thread, released
    whenever the driver returns).
    """
    try:
        src = parse_source(source)
    except ConfigError as exc:  # not a source at all (empty, control characters)
        return ProbeResult(sources.redact(source), "unknown", False, error=str(exc))
    shown = sources.redact(source)
    result: list[ProbeResult] = []

    def attempt() -> None:
        started = time.monotonic()
        try:
            cap = open_capture(src, width=width, height=height, timeout_s=timeout)
        except CaptureError as exc:
            result.append(ProbeResult(shown, src.kind, False, error=str(exc)))
            return
        try:
            ok, image = cap.read()
            grab_s = time.monotonic() - started
            backend = cap.getBackendName()
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not ok or image is None:
                result.append(
                    ProbeResult(
                        shown, src.kind, False, backend=backend, error="opened but no frame"
                    )
                )
                return
            result.append(
                ProbeResult(
                    shown,
                    src.kind,
                    True,
                    width=int(image.shape[1]),
                    height=int(image.shape[0]),
                    fps=round(fps, 3) if fps > 0 else None,
                    grab_s=round(grab_s, 4),
                    backend=backend,
                )
            )
        except cv2.error as exc:
            result.append(ProbeResult(shown, src.kind, False, error=f"read failed: {exc}"))
        finally:
            cap.release()

    worker = threading.Thread(target=attempt, name="camera-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return ProbeResult(shown, src.kind, False, error=f"no frame within {timeout:g}s")
    return result[0]


def list_video_devices(dev: Path = Path("/dev")) -> list[str]:
    """``/dev/video*`` nodes in numeric order (for ``edged cameras probe``)."""

    def number(p: Path) -> int:
        digits = p.name[len("video") :]
        return int(digits) if digits.isdigit() else 1 << 30

    return [str(p) for p in sorted(dev.glob("video*"), key=lambda p: (number(p), p.name))]
