"""Probing every configured camera (and ``/dev/video*``) once, for ``edged cameras probe``.

Returns plain results and prints nothing, so the CLI renders them as a table or JSON.
Sources are reported as capture redacts them (no passwords from RTSP URLs).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edged.config import CameraSettings
from edged.runtime.capture import ProbeResult, list_video_devices, probe


@dataclass(frozen=True)
class CameraProbe:
    """One probed source: the configured camera it belongs to (None for an extra device
    node) and whether its failure counts."""

    camera_id: str | None
    enabled: bool
    result: ProbeResult

    @property
    def counts(self) -> bool:
        """A failure of an *enabled* configured camera fails the probe; extra
        ``/dev/video*`` nodes are informational (a USB camera also exposes a metadata
        node that never gives frames)."""
        return self.camera_id is not None and self.enabled


@dataclass(frozen=True)
class ProbeReport:
    probes: tuple[CameraProbe, ...]

    @property
    def failed(self) -> bool:
        return any(p.counts and not p.result.ok for p in self.probes)


@dataclass(frozen=True)
class _Target:
    camera_id: str | None
    enabled: bool
    source: str
    width: int
    height: int


def probe_cameras(
    cameras: Sequence[CameraSettings], *, devices: bool = True, timeout: float = 10.0
) -> ProbeReport:
    """Open each of ``cameras`` (and, with ``devices``, every other ``/dev/video*``) and
    grab one frame."""
    targets = [_Target(c.id, c.enabled, c.source, c.width, c.height) for c in cameras]
    configured = {t.source for t in targets}
    if devices:
        targets += [
            _Target(None, True, dev, 0, 0) for dev in list_video_devices() if dev not in configured
        ]
    if not targets:
        return ProbeReport(())
    # Sources are independent and each may take the whole timeout: probe them together.
    with ThreadPoolExecutor(max_workers=min(4, len(targets))) as pool:
        results = list(
            pool.map(lambda t: probe(t.source, timeout, width=t.width, height=t.height), targets)
        )
    return ProbeReport(
        tuple(CameraProbe(t.camera_id, t.enabled, r) for t, r in zip(targets, results, strict=True))
    )
