"""The datasets edged's emotion tools share: FER2013 and the real photos, split by person.

``../shared/datasets/facial_expressions/`` (real news photos, one emotion label each) is
split into two fixed halves **by person**: the person is the file name without its trailing
number (``George_W_Bush_0012.jpg`` -> ``George_W_Bush``), and the half is one bit of the
SHA-256 of that name. Some people have over 100 photos; a per-file split would put the same
face on both sides and measure memory, not recognition.

- ``select``: for choosing models, crops, recipes and test-time modes (and nothing else).
- ``report``: only for the figures reported in the model card; never trained on, never
  used to choose.

A model that *learns* from real photos needs held-out photos of its own to be chosen on, so
the selection half is split again by person (another byte of the same digest): ``select-fit``
(about two thirds, the photos such a model may be trained on) and ``select-check`` (the
rest, for choosing between such a model and one that never saw a photo). ``select`` is the
union of the two and stays what every earlier choice was made on.

Everything here is plain data handling (only edged's label table), so the training tool,
the evaluation tool, the benchmarks and the tests read the data one way.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edged.models.catalog import LABEL_ALIASES  # plain data: imports nothing else of edged

HALVES = ("select", "report")
#: The two parts of the selection half (by person): trained on / chosen on.
SELECT_PARTS = ("select-fit", "select-check")
_TRAILING_NUMBER = re.compile(r"[_\-\s]*\d+$")

#: The photos' label spellings -> edged's canonical labels (the catalogue's table).
PHOTO_LABELS = LABEL_ALIASES


def shared_root() -> Path:
    """``$EDGED_SHARED``, else ``<repo>/../shared``."""
    env = os.environ.get("EDGED_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def photos_root() -> Path:
    return shared_root() / "datasets" / "facial_expressions"


def person_of(file_name: str) -> str:
    """The person a photo shows: its file name without extension and trailing number."""
    stem = Path(file_name).stem
    return _TRAILING_NUMBER.sub("", stem) or stem


def half_of(file_name: str) -> str:
    """``select`` or ``report``: a fixed function of the person, never of the file."""
    return HALVES[_digest(file_name)[0] & 1]


def part_of(file_name: str) -> str:
    """``select-fit``, ``select-check`` (parts of the selection half) or ``report``."""
    digest = _digest(file_name)
    if HALVES[digest[0] & 1] == "report":
        return "report"
    return SELECT_PARTS[1] if digest[1] % 3 == 0 else SELECT_PARTS[0]


def _digest(file_name: str) -> bytes:
    return hashlib.sha256(person_of(file_name).encode("utf-8")).digest()


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str  # canonical
    person: str


def parts_of(half: str) -> set[str]:
    """The parts (``select-fit``, ``select-check``, ``report``) that ``half`` covers."""
    if half == "all":
        return {*SELECT_PARTS, "report"}
    if half == "select":
        return set(SELECT_PARTS)
    if half in (*SELECT_PARTS, "report"):
        return {half}
    raise ValueError(f"half must be one of {HALVES + SELECT_PARTS} or 'all', got {half!r}")


def learnt_parts(sidecar: dict) -> set[str]:
    """The parts of the photos a model learnt, from its sidecar's ``learnt_from`` (training
    file -> what ``tools/fer_crops.py`` cut it from, e.g. ``facial_expressions:select-fit``).
    Empty for a model that learnt none, or whose sidecar does not say."""
    out: set[str] = set()
    for source in (sidecar.get("learnt_from") or {}).values():
        kind, _, half = str(source).partition(":")
        if kind == "facial_expressions":
            out |= parts_of(half)
    return out


def load_photos(root: Path | None = None, half: str = "all") -> list[Photo]:
    """The labelled photos of ``half`` (``select``, ``report``, ``all``, or a part of the
    selection half: ``select-fit``, ``select-check``), in file order."""
    root = root or photos_root()
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table} not found: the real photos live in ../shared/datasets/facial_expressions "
            "(set EDGED_SHARED)"
        )
    wanted = parts_of(half)
    out: list[Photo] = []
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            name, label = row["file"], row["label"].strip().lower()
            if label not in PHOTO_LABELS:
                raise ValueError(f"{table}: unknown label {label!r} for {name}")
            if part_of(name) not in wanted:
                continue
            out.append(Photo(root / "images" / name, PHOTO_LABELS[label], person_of(name)))
    out.sort(key=lambda p: p.path.name)
    return out
