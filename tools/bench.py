#!/usr/bin/env python3
"""Benchmark the pipeline against the raw model time of the same models on the same inputs.

For each case (an image, or the first frames of a video) it times, interleaved so a
background load hits every measurement alike:

* the pipeline end to end (``Pipeline.process([frame])``) and its own stage timers
  (detect, crop, classify, post);
* the raw ``session.run`` of the detector on the already-preprocessed input tensor, and of
  the classifier on the already-made batch (split exactly as the pipeline splits it);
* the detector's preprocessing (letterbox + blob) and the classifier's (crop batch → NCHW
  float32) on their own.

The overhead is a ratio: pipeline time / raw model time. 1.00 would mean the pipeline costs
nothing beyond the networks themselves. Default cases: one face pair (``s_l.jpg``) and a
crowd (``selfie.jpg``) from ``../shared/images``.

Usage::

    .venv/bin/python tools/bench.py                      # SCRFD-2.5G + EfficientNet-B0 stand-in
    .venv/bin/python tools/bench.py --classifier mobilenet_7 --repeat 10 clip.mp4
    .venv/bin/python tools/bench.py --models-dir /var/lib/edged/models --providers cuda,cpu

Without ``--models-dir`` a temporary models directory in the seed layout is made of
symlinks into ``../shared/models`` (real detectors, random-weight stand-in classifiers:
right for timing, meaningless for emotions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from edged.config import PipelineSettings, Settings
from edged.models.classification import OnnxClassifier
from edged.models.detection import Detections
from edged.models.providers import SessionFactory
from edged.pipeline import Pipeline, build_pipeline

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_models_dir  # noqa: E402  (the tests' seed layout, one copy)

#: Rows of the table: (key, label). ``*`` marks values derived by subtraction.
ROWS: tuple[tuple[str, str], ...] = (
    ("det_pre", "detector preprocess (letterbox+blob)"),
    ("det_raw", "detector session.run (raw)"),
    ("det_post", "detector decode+NMS *"),
    ("crop", "crop / align"),
    ("cls_pre", "classifier preprocess"),
    ("cls_raw", "classifier session.run (raw)"),
    ("cls_post", "softmax + split + Face objects *"),
    ("pipeline", "PIPELINE end to end"),
    ("raw", "RAW models (det run + cls run)"),
)


def shared_root() -> Path:
    return Path(os.environ.get("EDGED_SHARED", REPO.parent / "shared"))


def seed_layout(dest: Path) -> Path:
    """A models directory in the seed layout of symlinks into ../shared/models."""
    models = shared_root() / "models"
    if not models.is_dir():
        sys.exit(f"bench: shared models not found at {models}: set EDGED_SHARED or --models-dir")
    return make_models_dir(shared_root(), dest)


def load_frames(path: Path, max_frames: int) -> list[np.ndarray]:
    img = cv2.imread(str(path))
    if img is not None:
        return [img]
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        sys.exit(f"bench: cannot read {path} as an image or a video")
    return frames


def bench_case(
    pipe: Pipeline,
    det_session: ort.InferenceSession,
    frames: Sequence[np.ndarray],
    repeat: int,
    warmup: int,
) -> dict[str, Any]:
    """Per-frame stage times (seconds) over ``repeat`` rounds of every frame.

    Each round measures the pipeline and the raw runs back to back, in alternating order
    (pipeline first on even rounds, raw first on odd ones), so neither side systematically
    inherits warm caches or a busy neighbour from the other.
    """
    det: Any = pipe.detector  # every detector family has a public ``preprocess``
    cls = pipe.classifier
    if cls is not None and not isinstance(cls, OnnxClassifier):
        raise SystemExit(f"bench: cannot time the raw run of {type(cls).__name__}")
    det_input = det_session.get_inputs()[0].name
    clock = time.perf_counter

    # The crop batches the raw classifier run gets: exactly the pipeline's (made once).
    batches: list[np.ndarray | None] = []
    for frame in frames:
        found = pipe.process([frame])[0].faces
        if cls is None or not found:
            batches.append(None)
            continue
        dets = Detections(
            np.array([f.bbox for f in found], np.float32),
            np.array([f.score for f in found], np.float32),
            np.stack([f.landmarks for f in found]).astype(np.float32),
        )
        batches.append(pipe.crops([frame], [dets]))

    def run_pipeline(frame: np.ndarray) -> tuple[float, dict[str, float], int]:
        before = pipe.stats.snapshot()["totals_s"]
        t0 = clock()
        results = pipe.process([frame])
        elapsed = clock() - t0
        after = pipe.stats.snapshot()["totals_s"]
        return elapsed, {k: after[k] - before[k] for k in after}, len(results[0].faces)

    def run_raw(frame: np.ndarray, batch: np.ndarray | None) -> dict[str, float]:
        t0 = clock()
        blob, _ = det.preprocess(frame)
        t_det_pre = clock() - t0
        t0 = clock()
        det_session.run(None, {det_input: blob})
        t_det_raw = clock() - t0
        t_cls_pre = t_cls_raw = 0.0
        if cls is not None and batch is not None:
            t0 = clock()
            tensor = cls.preprocess(batch)
            t_cls_pre = clock() - t0
            for i in range(0, len(tensor), pipe.max_batch):  # split as the pipeline does
                chunk = tensor[i : i + pipe.max_batch]
                t0 = clock()
                cls.run_raw(chunk)
                t_cls_raw += clock() - t0
        return {
            "det_pre": t_det_pre,
            "det_raw": t_det_raw,
            "cls_pre": t_cls_pre,
            "cls_raw": t_cls_raw,
        }

    samples: dict[str, list[float]] = {k: [] for k, _ in ROWS}
    faces = 0
    for round_ in range(warmup + repeat):
        for frame, batch in zip(frames, batches, strict=True):
            if round_ % 2 == 0:
                t_pipe, stage, faces = run_pipeline(frame)
                raw = run_raw(frame, batch)
            else:
                raw = run_raw(frame, batch)
                t_pipe, stage, faces = run_pipeline(frame)
            if round_ < warmup:
                continue
            samples["pipeline"].append(t_pipe)
            samples["raw"].append(raw["det_raw"] + raw["cls_raw"])
            for key in ("det_pre", "det_raw", "cls_pre", "cls_raw"):
                samples[key].append(raw[key])
            samples["det_post"].append(max(stage["detect"] - raw["det_pre"] - raw["det_raw"], 0.0))
            samples["crop"].append(stage["crop"])
            samples["cls_post"].append(
                max(stage["classify"] - raw["cls_pre"] - raw["cls_raw"], 0.0) + stage["post"]
            )
    return {"faces": faces, "frames": len(frames), "samples": samples}


def summarize(case: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for key, _ in ROWS:
        vals = sorted(case["samples"][key])
        med = statistics.median(vals)
        p90 = vals[min(len(vals) - 1, round(0.9 * (len(vals) - 1)))]
        rows[key] = {"median_ms": med * 1000, "p90_ms": p90 * 1000}
    pipe_ms = rows["pipeline"]["median_ms"]
    raw_ms = rows["raw"]["median_ms"]
    # The ratio per round (pipeline and raw measured back to back), then its median.
    ratios = [
        p / r for p, r in zip(case["samples"]["pipeline"], case["samples"]["raw"], strict=True)
    ]
    return {
        "faces": case["faces"],
        "frames": case["frames"],
        "rows": rows,
        "pipeline_fps": 1000.0 / pipe_ms,
        "raw_fps": 1000.0 / raw_ms,
        "overhead_ratio_of_medians": pipe_ms / raw_ms,
        "overhead_ratio_median": statistics.median(ratios),
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(name: str, path: Path, s: dict[str, Any]) -> None:
    print(f"\n== {name}: {path.name}  ({s['frames']} frame(s), {s['faces']} faces per frame)")
    print(f"{'stage':44s} {'median ms':>10s} {'p90 ms':>10s}")
    for key, label in ROWS:
        r = s["rows"][key]
        if key == "pipeline":
            print("-" * 66)
        print(f"{label:44s} {r['median_ms']:10.2f} {r['p90_ms']:10.2f}")
    print(f"{'frames/s pipeline | raw':44s} {s['pipeline_fps']:10.2f} {s['raw_fps']:10.2f}")
    print(
        f"{'overhead pipeline/raw (median of ratios)':44s} "
        f"{s['overhead_ratio_median']:10.3f}   (ratio of medians "
        f"{s['overhead_ratio_of_medians']:.3f})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="images/videos (default: s_l + selfie)")
    p.add_argument("--detector", default="scrfd_2.5g")
    p.add_argument("--classifier", default="enet_b0_8", help="'none' for detection only")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=5, help="measured rounds per case")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = edged's choice)")
    p.add_argument("--providers", default="cpu", help="comma list, e.g. cuda,cpu")
    p.add_argument("--crop", choices=["model", "box", "align"], default="model")
    p.add_argument("--max-faces", type=int, default=1024)
    p.add_argument("--max-batch", type=int, default=PipelineSettings().max_batch)
    p.add_argument("--video-frames", type=int, default=16, help="frames taken from a video")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images = shared_root() / "images"
    files = args.files or [images / "s_l.jpg", images / "selfie.jpg"]
    names = [f.stem for f in files] if args.files else ["one face (s_l)", "crowd (selfie)"]
    settings = Settings(
        pipeline=PipelineSettings(
            max_faces=args.max_faces,
            max_batch=args.max_batch,
            crop=args.crop,
            intra_op_threads=args.threads,
        )
    )
    factory = SessionFactory(
        providers=args.providers.split(","), intra_op_threads=args.threads, trt_cache_dir=None
    )
    classifier = None if args.classifier == "none" else args.classifier
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        models_dir = args.models_dir or seed_layout(Path(tmp))
        pipe = build_pipeline(
            settings,
            factory,
            detector=args.detector,
            classifier=classifier,
            models_dir=models_dir,
            detect_only=classifier is None,
        )
        assert pipe.loaded is not None
        det_session = pipe.loaded.sessions[args.detector][0]
        info = machine()
        print("edged pipeline benchmark")
        for k, v in info.items():
            print(f"  {k}: {v}")
        print(
            f"  models: {pipe.models}  providers: {pipe.providers}  crop: {args.crop}  "
            f"max_batch: {args.max_batch}  threads: detector {factory.threads('detector')}, "
            f"classifier {factory.threads('emotion')}  "
            f"repeat: {args.repeat} (+{args.warmup} warm-up)"
        )
        report: dict[str, Any] = {"machine": info, "models": pipe.models, "cases": {}}
        for name, path in zip(names, files, strict=True):
            frames = load_frames(path, args.video_frames)
            case = bench_case(pipe, det_session, frames, args.repeat, args.warmup)
            summary = summarize(case)
            report["cases"][name] = {"file": str(path), **summary}
            print_table(name, path, summary)
    print("\n* derived: the stage's pipeline time minus its separately timed parts")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
