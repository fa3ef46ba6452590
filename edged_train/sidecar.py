"""The model's JSON sidecar: the daemon's contract (input, labels, normalisation, the face
crop) and how the model was made (config, data digests, plan, selection, machine).

The contract fields come from the catalogue's ``edged_fer`` entry, so the sidecar states
what the daemon will do; tests/models/test_own_model.py checks the shipped ones against it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged_train.config import TrainConfig
from edged_train.data import CANONICAL, FER_CLASSES, MEAN, SIZE, STD

PREPROCESSING = "BGR->GRAY (cv2.COLOR_BGR2GRAY), cv2.resize 48x48 INTER_AREA, /255, (x-0.5)/0.5"
#: what an export-only run (--export-from) carries over from the training run's sidecar
CARRIED = (
    "seed",
    "train_config",
    "effective_epochs",
    "scheduled_epochs",
    "epoch_changes",
    "best_epoch",
    "best_weights",
    "init_checkpoint",
    "teacher",
    "learnt_from",
    "train_wall_s",
    "torch_version",
    "git_rev",
)


def git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def contract(cfg: TrainConfig, sha256: str, face_crop: dict[str, Any] | None) -> dict[str, Any]:
    """What the daemon's loader and classifier rely on."""
    return {
        "name": cfg.name,
        "version": cfg.version,
        "input": "input",
        "output": "logits",
        "size": SIZE,
        "channels": 1,
        "mean": [MEAN],
        "std": [STD],
        "labels": FER_CLASSES,
        "canonical_labels": CANONICAL,
        "preprocessing": PREPROCESSING,
        "sha256": sha256,
        # How the training faces were framed (edged.models.catalog.CropSpec.to_json); the
        # catalogue entry of a model trained here must use the same (test_own_model.py).
        "face_crop": face_crop,
    }


@dataclass
class Provenance:
    """How the weights were made and chosen (everything but the contract)."""

    effective_epochs: int
    scheduled_epochs: int
    epoch_changes: list[tuple[int, int, int]]
    best_epoch: int | None
    best_weights: str | None
    test_time_mode: str
    val_accuracy_by_mode: dict[str, float]
    params: int
    data_sha256: dict[str, str]
    #: training file -> what it was cut from (FER2013, or a part of facial_expressions)
    learnt_from: dict[str, str]
    val_size: int
    train_size: int
    val_accuracy: float
    test_accuracy: float | None
    fast_variant: dict[str, Any] | None
    torch_version: str
    init_checkpoint: dict[str, str] | None
    teacher: list[dict[str, str]] | None
    train_wall_s: float


def build(
    cfg: TrainConfig, sha256: str, face_crop: dict[str, Any] | None, prov: Provenance
) -> dict[str, Any]:
    side = contract(cfg, sha256, face_crop)
    side["seed"] = cfg.seed
    side["train_config"] = cfg.as_dict()
    side.update(vars(prov))
    side["train_wall_s"] = round(prov.train_wall_s, 1)
    side.update(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        cpu_count=os.cpu_count(),
        git_rev=git_rev(),
        python=sys.version.split()[0],
    )
    return side


def of_checkpoint(checkpoint: str | Path) -> Path:
    """The sidecar a run wrote beside ``checkpoint`` (``NAME.pt``, ``.best.pt``, ``.last.pt``
    -> ``NAME.json``); it may not exist."""
    name = Path(checkpoint).name
    for suffix in (".best.pt", ".last.pt", ".pt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(checkpoint).with_name(name + ".json")


def split_of(side: dict[str, Any]) -> tuple[int, float]:
    """(seed, fraction) of a run's validation split: ``split_seed`` since it exists, the run's
    ``seed`` before (the split used it)."""
    tc = side.get("train_config", {})
    return int(tc.get("split_seed", side.get("seed", tc.get("seed")))), float(tc["val_fraction"])


def check_lineage(cfg: TrainConfig, data_file: str, data_sha: str) -> None:
    """Refuse a run whose start model or teachers learnt from its validation images: one
    that read the same ``--data`` file under another split (seed or fraction) trained on
    images this run holds out, so its validation (which chooses the epoch and test-time
    mode) would score memory. A checkpoint without a sidecar, or trained on other data,
    cannot be checked and is let through."""
    mine = (cfg.split_seed, cfg.val_fraction)
    for role, path in [
        *(("--init-checkpoint", p) for p in [cfg.init_checkpoint] if p),
        *(("--export-from", p) for p in [cfg.export_from] if p),
        *(("--teacher", p) for p in cfg.teacher),
    ]:
        side_path = of_checkpoint(path)
        if not side_path.is_file():
            continue
        side = json.loads(side_path.read_text())
        if side.get("data_sha256", {}).get(data_file) != data_sha:
            continue
        theirs = split_of(side)
        if theirs != mine:
            raise SystemExit(
                f"{role} {path} was trained on {data_file} with validation split "
                f"(seed {theirs[0]}, fraction {theirs[1]}) ({side_path}); this run's split "
                f"(--split-seed {mine[0]}, --val-fraction {mine[1]}) would validate on images "
                f"it learnt: give --split-seed {theirs[0]} --val-fraction {theirs[1]}"
            )


def carry_over(side: dict[str, Any], cfg: TrainConfig, t_start: float) -> None:
    """Export-only run: the weights were trained by an earlier run, whose sidecar (next to
    the checkpoint) says how; this one only chose the test-time mode and exported."""
    assert cfg.export_from
    exported_from, rev = side["init_checkpoint"], side["git_rev"]
    trained = of_checkpoint(cfg.export_from)
    run = json.loads(trained.read_text()) if trained.is_file() else {}
    for key in CARRIED:
        if key in run:
            side[key] = run[key]
    for name, digest in run.get("data_sha256", {}).items():
        side["data_sha256"].setdefault(name, digest)
    side["export"] = {
        "from": exported_from,
        "run_sidecar": str(trained) if run else None,
        "args": cfg.as_dict(),
        "git_rev": rev,
        "wall_s": round(time.time() - t_start, 1),
    }


def dumps(side: dict[str, Any]) -> str:
    return json.dumps(side, indent=2)
