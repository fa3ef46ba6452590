#!/usr/bin/env python3
"""Benchmark the whole daemon: capture → inference → tracking → spool → broker → subscriber.

Runs a real ``edged run`` process against a Mosquitto broker it starts on a free port,
with N file cameras playing a video in which a face keeps appearing, changing and leaving.

- **Latency**: for every event a subscriber receives, ``receive time - event ts``. The
  event's ``ts`` is the wall-clock capture time of the frame that caused it, so this is
  frame capture → event in the subscriber's hands (same machine, same clock). Note that
  the hysteresis (``min_dwell_s``) is not in it: it is measured from the frame that
  completed the dwell.
- **Throughput**: cameras read their files as fast as they are processed
  (``realtime = false``, fps cap 240), and the heartbeat's ``fps_processed`` per camera is
  summed, after a warm-up.

    python tools/bench_daemon.py --cameras 1 4 --seconds 30

Prints medians and p99 with the machine it ran on. Needs ../shared (or $EDGED_SHARED) for
the models and the face image, like the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_models_dir  # noqa: E402
from mqtt_helpers import MosquittoBroker  # noqa: E402


def shared_dir() -> Path:
    root = Path(os.environ.get("EDGED_SHARED", REPO.parent / "shared"))
    if not (root / "models").is_dir():
        raise SystemExit(f"shared material not found at {root} (set EDGED_SHARED)")
    return root


def make_video(path: Path, face_image: Path, fps: int = 10) -> None:
    """A face for 3 s, mirrored for 3 s, gone for 2 s: appeared / changed / left."""
    img = cv2.imread(str(face_image))
    if img is None:
        raise SystemExit(f"cannot read {face_image}")
    h, w = 360, 480
    tile = cv2.resize(img, (300, int(300 * img.shape[0] / img.shape[1])))
    frames = []
    for variant in (tile, cv2.flip(tile, 1), None):
        for _ in range((3 if variant is not None else 2) * fps):
            frame = np.full((h, w, 3), 60, np.uint8)
            if variant is not None:
                th, tw = variant.shape[:2]
                frame[30 : 30 + th, 90 : 90 + tw] = variant[: h - 30]
            frames.append(frame)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_case(
    n_cameras: int,
    seconds: float,
    warmup: float,
    broker: MosquittoBroker,
    models: Path,
    video: Path,
    work: Path,
    detector: str,
    classifier: str,
    realtime: bool,
) -> dict[str, Any]:
    device = f"bench{n_cameras}{'rt' if realtime else 'max'}"
    cams = "\n".join(
        f'[[cameras]]\nid = "cam{i}"\nsource = "{video}"\nloop = true\n'
        f"realtime = {'true' if realtime else 'false'}\nfps = {10 if realtime else 240}\n"
        for i in range(n_cameras)
    )
    cfg = work / f"{device}.toml"
    cfg.write_text(
        f'[device]\nid = "{device}"\nstate_dir = "{work / device}"\n'
        f"[mqtt]\nport = {broker.port}\nheartbeat_s = 1\n[health]\nenabled = false\n"
        f'[pipeline]\ndetector = "{detector}"\nclassifier = "{classifier}"\nproviders = ["cpu"]\n'
        "[smoothing]\nmin_dwell_s = 0.3\nmin_confidence = 0.0\ntrack_timeout_s = 1.0\n"
        f'[models]\ndir = "{models}"\n{cams}',
        encoding="utf-8",
    )
    latencies: list[float] = []
    fps: list[float] = []
    t0 = [0.0]
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if now - t0[0] < warmup:
            return
        body = json.loads(msg.payload)
        with lock:
            if msg.topic.endswith("/event"):
                ts = datetime.fromisoformat(body["ts"].replace("Z", "+00:00")).timestamp()
                latencies.append(now - ts)
            elif msg.topic.endswith("/heartbeat"):
                cams_ = body["cameras"].values()
                fps.append(sum(c["fps_processed"] for c in cams_))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{device}")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe([(f"edged/{device}/+/event", 1), (f"edged/{device}/heartbeat", 0)])
    sub.loop_start()
    log = (work / f"{device}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg), "--log-format", "json"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    t0[0] = time.time()
    time.sleep(warmup + seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    sub.loop_stop()
    sub.disconnect()
    log.close()
    with lock:
        lat_ms = [x * 1000 for x in latencies]
        return {
            "cameras": n_cameras,
            "mode": "realtime 10 fps" if realtime else "as fast as processed",
            "events": len(lat_ms),
            "latency_median_ms": statistics.median(lat_ms) if lat_ms else float("nan"),
            "latency_p99_ms": percentile(lat_ms, 99),
            "fps_total_median": statistics.median(fps) if fps else float("nan"),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--detector", default="yunet")
    ap.add_argument("--classifier", default="enet_b0_8")
    ap.add_argument("--image", type=Path, help="face image (default: ../shared/images/s_l.jpg)")
    args = ap.parse_args()
    shared = shared_dir()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = make_models_dir(shared, work / "models")
        video = work / "faces.avi"
        make_video(video, args.image or shared / "images" / "s_l.jpg")
        broker = MosquittoBroker(work / "broker")
        broker.start()
        rows = []
        try:
            for n in args.cameras:
                for realtime in (True, False):
                    rows.append(
                        run_case(
                            n,
                            args.seconds,
                            args.warmup,
                            broker,
                            models,
                            video,
                            work,
                            args.detector,
                            args.classifier,
                            realtime,
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            broker.kill()
    print(
        f"\nmachine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python={platform.python_version()} onnxruntime={onnxruntime.__version__} "
        f"models: {args.detector} + {args.classifier}"
    )
    print(
        f"{'cams':>4} {'mode':<22} {'events':>6} {'lat p50 ms':>10} {'lat p99 ms':>10} {'fps':>7}"
    )
    for r in rows:
        print(
            f"{r['cameras']:>4} {r['mode']:<22} {r['events']:>6} {r['latency_median_ms']:>10.1f} "
            f"{r['latency_p99_ms']:>10.1f} {r['fps_total_median']:>7.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
