#!/usr/bin/env python3
"""The daemon's per-camera path over a generated video: work per frame and event agreement.

The video (640x480, ``--fps``) shows real faces cut from ``../shared/images`` on a noisy
background: they appear, move, change expression (their crop is swapped for another face
crop that the classifier labels differently) and leave. Every configuration runs
:class:`edged.runtime.processor.CameraProcessor` (pipeline + tracker + scheduling, no MQTT)
over it, for 1 camera and for N cameras in one batch per step (``--cameras``), and reports

* frames/s (all cameras' frames per second of wall time, one process, no frame dropped),
* classifications and detector calls per frame,
* **event agreement** with the every-frame configuration: events are paired one to one
  greedily when type and emotion are equal and their frame times differ by at most one
  ``min_dwell_s``; agreement is ``2 * paired / (events here + events there)``.

The peer loop is what a user writes with the upstream libraries (InsightFace's SCRFD
decoding, hsemotion-onnx's batched ``predict_multi_emotions``): SCRFD and every face
classified on every frame, ~20 lines of onnxruntime (:func:`peer_loop`), same video.

The machine running this may be shared and loaded: every configuration is run ``--repeat``
times, interleaved (one round runs each configuration once), and the median is reported.

Usage::

    .venv/bin/python tools/bench_video.py                          # SCRFD-2.5G + enet_b0 stand-in
    .venv/bin/python tools/bench_video.py --detector scrfd_500m --classifier edged_fer --phase lite
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from edged.config import Settings, SmoothingSettings
from edged.models.catalog import CATALOG
from edged.models.providers import SessionFactory
from edged.pipeline import Pipeline, build_pipeline
from edged.runtime.processor import CameraFrame, CameraProcessor, process_batch
from edged.runtime.tracking import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import seed_layout, shared_root

W, H = 640, 480


# --------------------------------------------------------------------------- the video


@dataclass
class Actor:
    """One face on screen from ``start`` to ``end`` (frames), moving linearly, with crops."""

    crops: list[np.ndarray]  # swapped at the frames in ``swaps``
    swaps: list[int]
    start: int
    end: int
    pos0: tuple[float, float]
    pos1: tuple[float, float]
    size: int

    def at(self, i: int) -> tuple[np.ndarray, int, int] | None:
        if not self.start <= i < self.end:
            return None
        k = sum(1 for s in self.swaps if i >= s)
        f = (i - self.start) / max(self.end - self.start - 1, 1)
        x = self.pos0[0] + f * (self.pos1[0] - self.pos0[0])
        y = self.pos0[1] + f * (self.pos1[1] - self.pos0[1])
        return self.crops[k % len(self.crops)], int(x), int(y)


def face_tiles(pipe: Pipeline, images: Path) -> list[np.ndarray]:
    """Real faces from the shared photos with margin, and variants (flip, darker)."""
    tiles: list[np.ndarray] = []
    for name in ("s_l.jpg", "selfie.jpg"):
        img = cv2.imread(str(images / name))
        if img is None:
            continue
        for face in pipe.process_one(img).faces:
            x1, y1, x2, y2 = (int(v) for v in face.bbox)
            w, h = x2 - x1, y2 - y1
            if min(w, h) < 40:
                continue
            x1, y1 = max(0, x1 - w // 3), max(0, y1 - h // 3)
            tile = img[y1 : y2 + h // 3, x1 : x2 + w // 3].copy()
            tiles += [tile, cv2.flip(tile, 1), cv2.convertScaleAbs(tile, alpha=0.7)]
            if len(tiles) >= 30:
                return tiles
    return tiles


def background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(40, 120, (12, 16, 3), dtype=np.uint8), (W, H))
    noise = rng.integers(0, 12, (H, W, 3), dtype=np.uint8)
    return cv2.add(base, noise)


def render(actors: list[Actor], n: int, seed: int) -> list[np.ndarray]:
    bg = background(seed)
    frames = []
    for i in range(n):
        frame = bg.copy()
        for a in actors:
            got = a.at(i)
            if got is None:
                continue
            crop, x, y = got
            tile = cv2.resize(crop, (a.size, a.size), interpolation=cv2.INTER_AREA)
            x, y = min(max(x, 0), W - a.size), min(max(y, 0), H - a.size)
            frame[y : y + a.size, x : x + a.size] = tile
        frames.append(frame)
    return frames


def make_scene(pipe: Pipeline, images: Path, n: int, seed: int) -> list[np.ndarray]:
    """Three people: A walks across and changes expression, B stays then leaves, C comes in
    late, moves and changes expression. Crops are chosen so a swap changes the label."""
    tiles = face_tiles(pipe, images)
    labelled: list[tuple[np.ndarray, str, float]] = []
    for tile in tiles:
        frame = background(seed)
        frame[140:340, 220:420] = cv2.resize(tile, (200, 200))
        faces = pipe.process_one(frame).faces
        if len(faces) == 1 and faces[0].emotion is not None:
            labelled.append((tile, faces[0].emotion, faces[0].confidence))
    labelled.sort(key=lambda t: -t[2])
    by_label: dict[str, list[np.ndarray]] = {}
    for tile, label, _ in labelled:
        by_label.setdefault(label, []).append(tile)
    labels = list(by_label)
    if len(labels) < 2:
        sys.exit(f"bench_video: the classifier gives every face the same label {labels}")

    def pick(k: int) -> np.ndarray:
        pool = by_label[labels[k % len(labels)]]
        return pool[(k // len(labels)) % len(pool)]

    actors = [
        Actor(
            [pick(0), pick(1)],
            [int(n * 0.45)],
            int(n * 0.03),
            int(n * 0.8),
            (40, 120),
            (380, 160),
            170,
        ),
        Actor([pick(2)], [], int(n * 0.2), int(n * 0.6), (440, 40), (440, 40), 150),
        Actor([pick(3), pick(4)], [int(n * 0.75)], int(n * 0.47), n, (60, 300), (260, 250), 160),
    ]
    return render(actors, n, seed)


# --------------------------------------------------------------------------- edged


@dataclass
class Run:
    fps: float
    cls_per_frame: float
    det_per_frame: float
    events: list[list[tuple[float, str, str | None, int]]]  # per camera


def run_edged(
    pipe: Pipeline,
    settings: Settings,
    smoothing: SmoothingSettings,
    frames: list[np.ndarray],
    cameras: int,
    fps: int,
) -> Run:
    """Every frame through ``cameras`` processors (one batch per step), timed."""
    procs = [
        CameraProcessor(Tracker(smoothing, f"cam{c}", "bench"), settings.pipeline)
        for c in range(cameras)
    ]
    events: list[list[tuple[float, str, str | None, int]]] = [[] for _ in procs]
    classified = detected = 0
    t0 = time.perf_counter()
    for i, image in enumerate(frames):
        ts = i / fps
        out = process_batch(pipe, [(p, CameraFrame(image, ts, ts)) for p in procs])
        for c, res in enumerate(out):
            classified += res.classified
            detected += res.detected
            events[c] += [(ts, e.type, e.emotion, e.track_id) for e in res.events]
    end = len(frames) / fps
    for c, p in enumerate(procs):
        events[c] += [(end, e.type, e.emotion, e.track_id) for e in p.tracker.flush(end)]
    wall = time.perf_counter() - t0
    total = len(frames) * cameras
    return Run(total / wall, classified / total, detected / total, events)


def agreement(
    ref: list[tuple[float, str, str | None, int]],
    got: list[tuple[float, str, str | None, int]],
    tolerance: float,
) -> float:
    """``2 * paired / (len(ref) + len(got))``; pairs: same type and emotion, within tolerance."""
    if not ref and not got:
        return 1.0
    used: set[int] = set()
    paired = 0
    for t, kind, emo, _ in ref:
        best = None
        for j, (t2, kind2, emo2, _) in enumerate(got):
            if j in used or kind2 != kind or emo2 != emo or abs(t2 - t) > tolerance + 1e-9:
                continue
            if best is None or abs(t2 - t) < abs(got[best][0] - t):
                best = j
        if best is not None:
            used.add(best)
            paired += 1
    return 2 * paired / (len(ref) + len(got))


# --------------------------------------------------------------------------- the peer


def peer_loop(det_path: Path, cls_path: Path, cls_name: str, frames: list[np.ndarray]) -> float:
    """InsightFace SCRFD + batched classification of every face on every frame: frames/s."""
    spec = CATALOG[cls_name]
    det = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    cls = ort.InferenceSession(str(cls_path), providers=["CPUExecutionProvider"])
    size, mean, std = spec.input_size, np.array(spec.mean), np.array(spec.std)
    t0 = time.perf_counter()
    for img in frames:
        scale = 640 / max(img.shape[:2])
        canvas = np.zeros((640, 640, 3), np.uint8)
        small = cv2.resize(img, None, fx=scale, fy=scale)
        canvas[: small.shape[0], : small.shape[1]] = small
        blob = cv2.dnn.blobFromImage(canvas, 1 / 128, (640, 640), (127.5,) * 3, swapRB=True)
        outs = det.run(None, {det.get_inputs()[0].name: blob})
        boxes, scores = [], []
        for k, stride in enumerate((8, 16, 32)):
            n = 640 // stride
            centers = np.stack(np.mgrid[:n, :n][::-1], -1).reshape(-1, 2) * stride
            centers = np.repeat(centers, 2, axis=0).astype(np.float32)
            s, d = outs[k].reshape(-1), outs[k + 3].reshape(-1, 4) * stride
            keep = s >= 0.5
            c, d = centers[keep], d[keep]
            boxes.append(np.hstack([c - d[:, :2], c + d[:, 2:]]) / scale)
            scores.append(s[keep])
        b, s = np.concatenate(boxes), np.concatenate(scores)
        idx = cv2.dnn.NMSBoxes(
            np.hstack([b[:, :2], b[:, 2:] - b[:, :2]]).tolist(), s.tolist(), 0.5, 0.4
        )
        crops = []
        for x1, y1, x2, y2 in b[np.array(idx, int).reshape(-1)].astype(int):
            face = img[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
            if face.size:
                crops.append(cv2.resize(face, (size, size)))
        if crops:
            x = np.stack(crops).astype(np.float32) / 255.0
            x = x[..., ::-1] if spec.color == "rgb" else x.mean(-1, keepdims=True)
            x = ((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
            cls.run(None, {cls.get_inputs()[0].name: x})
    return len(frames) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- main


#: Configurations: every = every face every frame; sched = the [pipeline] defaults.
CONFIGS: dict[str, dict[str, Any]] = {
    "every": {"reclassify_interval_s": 0, "detect_interval": 1},
    "sched": {},
    "sched+det2": {"detect_interval": 2},
    "sched+det3": {"detect_interval": 3},
    "sched+det5": {"detect_interval": 5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--detector", default="scrfd_2.5g")
    ap.add_argument("--classifier", default="enet_b0_8")
    ap.add_argument("--phase", default="sota_phase2")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: edged's choice)")
    ap.add_argument("--configs", default="", help="comma-separated subset of the config names")
    ap.add_argument("--set", action="append", default=[], help="extra [pipeline] KEY=VALUE")
    ap.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="[smoothing] min_confidence (random-weight stand-ins score ~1/classes: use 0)",
    )
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    models_dir = seed_layout(Path(tempfile.mkdtemp(prefix="bench_video_")))
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    factory = SessionFactory(providers=["cpu"], intra_op_threads=a.threads)
    base = Settings(pipeline={"phase": a.phase, "providers": ["cpu"], **extra})  # type: ignore[arg-type]
    pipe = build_pipeline(
        base, factory, detector=a.detector, classifier=a.classifier, models_dir=models_dir
    )
    assert pipe.loaded is not None
    smooth: dict[str, Any] = {"enabled": pipe.loaded.smoothing}
    if a.min_confidence is not None:
        smooth["min_confidence"] = a.min_confidence
    smoothing = base.smoothing.model_copy(update=smooth)
    frames = make_scene(pipe, shared_root() / "images", a.frames, seed=7)
    names = [n for n in CONFIGS if not a.configs or n in a.configs.split(",")]
    if "every" not in names:
        names.insert(0, "every")
    det_spec, cls_spec = CATALOG[pipe.detector.name], CATALOG[a.classifier]
    peer_det = det_spec.paths(models_dir)[0] if det_spec.family == "scrfd" else None

    runs: dict[tuple[str, int], list[Run]] = {}
    peer: list[float] = []
    for _ in range(a.repeat):
        for name in names:
            s = base.model_copy(update={"pipeline": base.pipeline.model_copy(update=CONFIGS[name])})
            for cams in sorted({1, a.cameras}):
                runs.setdefault((name, cams), []).append(
                    run_edged(pipe, s, smoothing, frames, cams, a.fps)
                )
        if peer_det is not None:
            peer.append(peer_loop(peer_det, cls_spec.paths(models_dir)[0], a.classifier, frames))

    peer_fps = statistics.median(peer) if peer else float("nan")
    tol = smoothing.min_dwell_s
    ref = runs[("every", 1)][0].events[0]
    print(
        f"# {pipe.detector.name} + {a.classifier}, phase {a.phase}, {a.frames} frames "
        f"{W}x{H} @ {a.fps} fps, median of {a.repeat} interleaved run(s); "
        f"{len(ref)} events every-frame; peer loop {peer_fps:.2f} frames/s"
    )
    print(
        f"{'configuration':32} {'cams':>4} {'frames/s':>9} {'x peer':>7} "
        f"{'cls/frame':>9} {'det/frame':>9} {'agree':>6}"
    )
    table = []
    for (name, cams), rs in runs.items():
        fps = statistics.median(r.fps for r in rs)
        agree = statistics.mean(agreement(ref, ev, tol) for ev in rs[0].events)
        row = {
            "config": name,
            "cameras": cams,
            "fps": fps,
            "x_peer": fps / peer_fps,
            "cls_per_frame": rs[0].cls_per_frame,
            "det_per_frame": rs[0].det_per_frame,
            "agreement": agree,
            "events": len(rs[0].events[0]),
        }
        table.append(row)
        print(
            f"{name:32} {cams:>4} {fps:>9.2f} {fps / peer_fps:>7.2f} {rs[0].cls_per_frame:>9.2f} "
            f"{rs[0].det_per_frame:>9.2f} {agree:>6.1%}"
        )
    if a.json:
        a.json.write_text(json.dumps({"peer_fps": peer_fps, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
