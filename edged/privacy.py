"""Data minimisation: the ``[privacy]`` settings applied where payloads are built.

edged never keeps or sends an image: frames and face crops live in memory for one
inference and are gone; what leaves the process is labels, scores, boxes and counts. The
``[privacy]`` section takes more away, for deployments that need less:

* ``publish_boxes = false`` — no ``bbox`` in events or in the retained attributes;
* ``publish_scores = false`` — an event says its label and confidence, not the distribution;
* ``mode = "aggregate"`` — no per-person event, state or track id at all: per camera and per
  ``aggregate_interval_s`` one :class:`~edged.contracts.events.AggregateReport` with how
  many faces there were and how their emotions were distributed (built by :class:`Aggregator`);
* ``min_faces`` — an aggregate report only describes frames with at least that many faces;
* ``spool_max_age_s`` — spooled messages older than that are dropped (:mod:`edged.mqtt.spool`).

The functions here are pure and work on the typed payloads of :mod:`edged.contracts.events`
(spooled rows, already bytes, stay bytes); the tracker, the publisher and the daemon call
them at the points where a payload is made or sent. A remote ``config/set`` may only tighten these
settings (:func:`check_remote_privacy`); loosening them is the config file's job.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from edged.config import PrivacySettings
from edged.contracts.events import AggregateReport, EmotionEvent, StateAttributes
from edged.errors import ConfigError

#: Decimal places of the shares in an aggregate report.
_ROUND = 4


def minimise_event(event: EmotionEvent, privacy: PrivacySettings) -> EmotionEvent:
    """The event as ``privacy`` allows it to leave: ``bbox`` and ``scores`` withheld when off.

    Withheld fields become ``None``, which leaves their keys out of the payload rather
    than setting them to ``null``, so a subscriber cannot mistake "not published" for
    "not known".
    """
    bbox = event.bbox if privacy.publish_boxes else None
    scores = event.scores if privacy.publish_scores else None
    if bbox is event.bbox and scores is event.scores:
        return event
    return replace(event, bbox=bbox, scores=scores)


def minimise_attributes(attributes: StateAttributes, privacy: PrivacySettings) -> StateAttributes:
    """The retained ``attributes`` as ``privacy`` allows: per-track ``bbox`` withheld when off."""
    if privacy.publish_boxes:
        return attributes
    return replace(attributes, tracks=tuple(replace(t, bbox=None) for t in attributes.tracks))


def per_person_allowed(privacy: PrivacySettings) -> bool:
    """Whether events and per-track retained state may be published at all."""
    return privacy.mode == "tracks"


def minimise_spooled_event(payload: bytes, privacy: PrivacySettings) -> bytes | None:
    """A spooled event payload re-shaped for stricter settings; ``None``: drop it.

    Used when the settings tighten while events wait in the spool (broker away): what was
    recorded under the old settings must not leave under the new ones. A payload that is
    not a JSON object is left as it is (it is not an event edged wrote).
    """
    if not per_person_allowed(privacy):
        return None
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload
    if not isinstance(event, dict):
        return payload
    shaped = dict(event)
    if not privacy.publish_boxes:
        shaped.pop("bbox", None)
    if not privacy.publish_scores:
        shaped.pop("scores", None)
    if shaped == event:
        return payload
    return json.dumps(shaped, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_remote_privacy(current: PrivacySettings, new: PrivacySettings) -> None:
    """Refuse a remote change that would publish or keep more than ``current`` does.

    A remote sender may turn minimisation on, never off: ``publish_boxes`` and
    ``publish_scores`` may go from true to false, ``mode`` from ``tracks`` to
    ``aggregate``, ``min_faces`` and ``aggregate_interval_s`` may only grow, and
    ``spool_max_age_s`` may only be set or shrink (0, no limit, is the largest). The config
    file (SIGHUP or a restart) can change them either way. Raises ConfigError naming every
    key that would loosen.
    """
    problems: list[str] = []
    if new.publish_boxes and not current.publish_boxes:
        problems.append("privacy.publish_boxes may not be turned back on")
    if new.publish_scores and not current.publish_scores:
        problems.append("privacy.publish_scores may not be turned back on")
    if new.mode == "tracks" and current.mode == "aggregate":
        problems.append('privacy.mode may not go back from "aggregate" to "tracks"')
    if new.min_faces < current.min_faces:
        problems.append(f"privacy.min_faces may only grow (now {current.min_faces})")
    if new.aggregate_interval_s < current.aggregate_interval_s:
        problems.append(
            f"privacy.aggregate_interval_s may only grow (now {current.aggregate_interval_s:g})"
        )
    if _age_limit(new.spool_max_age_s) > _age_limit(current.spool_max_age_s):
        problems.append(
            "privacy.spool_max_age_s may only be set or shrink "
            f"(now {current.spool_max_age_s:g}; 0 = no limit)"
        )
    if problems:
        raise ConfigError(
            "config/set refused: a remote change may only reduce what edged publishes or "
            "keeps (change the config file to loosen it): " + "; ".join(problems)
        )


def _age_limit(value: float) -> float:
    return math.inf if value <= 0 else value


# -- aggregate mode -------------------------------------------------------------------------


class Aggregator:
    """Collects one camera's face counts and emotions between two aggregate reports.

    Fed once per processed frame with the established emotion of every live face
    (``None`` where not yet established); :meth:`report` closes the interval. Time comes
    in as arguments (monotonic seconds), so it is deterministic and testable.
    """

    def __init__(self, camera_id: str, device_id: str, privacy: PrivacySettings, now: float):
        self.camera_id = camera_id
        self.device_id = device_id
        self.privacy = privacy
        self._start = now
        self._frames = 0
        self._faces_total = 0
        self._faces_max = 0
        self._emotions: Counter[str] = Counter()

    def configure(self, privacy: PrivacySettings) -> None:
        """New settings (a reload) apply from the next frame; the open interval is kept."""
        self.privacy = privacy

    def observe(self, emotions: Iterable[str | None]) -> None:
        """One processed frame: the emotion of each live face. Frames with fewer faces than
        ``min_faces`` are not described at all (their faces are not counted either)."""
        labels = list(emotions)
        if len(labels) < self.privacy.min_faces:
            return
        self._frames += 1
        self._faces_total += len(labels)
        self._faces_max = max(self._faces_max, len(labels))
        self._emotions.update(lab for lab in labels if lab is not None)

    def due(self, now: float) -> bool:
        return now - self._start >= self.privacy.aggregate_interval_s

    def report(self, now: float, ts: str) -> AggregateReport | None:
        """Close the interval: the report, or ``None`` when no frame may be described."""
        interval, frames = now - self._start, self._frames
        total = sum(self._emotions.values())
        report = None
        if frames:
            report = AggregateReport(
                ts=ts,
                device=self.device_id,
                camera=self.camera_id,
                interval_s=round(interval, 3),
                frames=frames,
                faces=self._faces_max,
                faces_mean=round(self._faces_total / frames, 2),
                emotions={
                    lab: round(n / total, _ROUND) for lab, n in sorted(self._emotions.items())
                },
            )
        self._start = now
        self._frames = self._faces_total = self._faces_max = 0
        self._emotions.clear()
        return report


__all__ = [
    "Aggregator",
    "check_remote_privacy",
    "minimise_attributes",
    "minimise_event",
    "minimise_spooled_event",
    "per_person_allowed",
]
