#!/usr/bin/env python3
"""FER2013 re-cut by edged's own detector and crop code: training data framed like the daemon.

FER2013's faces were registered by its authors' own tool; edged's camera faces are framed
by YuNet/SCRFD boxes and landmarks. A model trained on one framing and run on the other
loses accuracy silently. This tool closes the gap by construction:

1. every 48x48 image is enlarged 4x (bicubic) and given 12 px (48 enlarged) of replicated
   border, so the detector sees the whole face with some context;
2. the daemon's detector chain of the ``lite`` phase runs on it (YuNet, then SCRFD-0.5G
   where YuNet finds nothing), the face nearest the centre is kept;
3. the crop is cut with ``edged.models.crops.face_crops`` and the model's
   :class:`~edged.models.catalog.CropSpec` (the catalogue's, or ``--crop`` JSON), at 48x48;
4. where no face is found, the registered image itself is kept (``found`` is False).

The result is an npz in the FER2013 layout (images, labels, classes, filenames, FER+ votes
and labels) plus ``found``, ``boxes``/``landmarks`` (in the original 48x48 pixels) and the
crop used, so ``tools/train_emotion.py --data`` trains on it unchanged.

``--photos PART`` does the same for the real photos of ``../shared/datasets/facial_expressions``
(``select-fit``: the part of the selection half a model may learn from, see
``tools/emotion_data.py``), exactly as ``eval_emotion.py --pipeline`` and the daemon see them:
the full photo, not enlarged, the detector chain, the **largest** face, the same crop. A photo
where no face is found is left out (its whole frame is not a face crop); ``contemptuous``
photos are left out (the 7-class model has no such output). The npz carries
``ferplus_votes`` of -1 (no FER+ votes: one-hot targets) and ``filenames``.

``--image-folder DIR`` (``DIR/<label>/*.jpg``, your own frames) is the same for fine-tuning
on your faces: ``tools/train_emotion.py --data my_crops.npz --init-checkpoint ...``.

``--framing`` prints where FER2013's faces sit in their 48x48 images by these detectors
(median landmarks in unit coordinates, box size and centre): how
``edged.models.catalog.FER2013_UNIT`` was measured.

  python tools/fer_crops.py --data ../shared/datasets/fer2013_train.npz --framing
  python tools/fer_crops.py --data ../shared/datasets/fer2013_train.npz --for edged_fer \\
      --out /tmp/fer/train_crops.npz
  python tools/fer_crops.py --photos select-fit --for edged_fer --out /tmp/fer/photos_fit.npz
  python tools/fer_crops.py --image-folder MY_FRAMES --for edged_fer --out my_crops.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tools", REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

UPSCALE = 4
PAD = 12  # original pixels of replicated border on each side


def build_detectors(names: list[str], models_dir: Path | None):
    import structlog
    from conftest import make_models_dir  # the tests' seed layout of ../shared models
    from emotion_data import shared_root

    from edged.config import PipelineSettings
    from edged.models.catalog import CATALOG
    from edged.models.loader import load_detector
    from edged.models.providers import SessionFactory

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if models_dir is None:
        models_dir = make_models_dir(shared_root(), Path(tempfile.mkdtemp(prefix="edged-crops-")))
    factory = SessionFactory(providers=["cpu"])
    return [(n, load_detector(CATALOG[n], models_dir, factory, PipelineSettings())) for n in names]


def enlarge(gray48: np.ndarray) -> np.ndarray:
    """The BGR image the detector sees: 4x bicubic, replicated border."""
    big = cv2.resize(gray48, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    p = PAD * UPSCALE
    big = cv2.copyMakeBorder(big, p, p, p, p, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def nearest_centre(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the box (N, 4) whose centre is nearest the image centre: the labelled face
    of an enlarged FER2013 image (training crops and ``eval_emotion --pipeline`` agree)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    return int(np.argmin(cx * cx + cy * cy))


def detect(detectors, image: np.ndarray):
    """(detector name, box, landmarks) of the face nearest the centre, in ``image`` pixels."""
    h, w = image.shape[:2]
    for name, det in detectors:
        r = det(image)
        if len(r):
            i = nearest_centre(r.boxes, w, h)
            return name, r.boxes[i], r.landmarks[i]
    return None, None, None


def to_original(pts: np.ndarray) -> np.ndarray:
    return pts / UPSCALE - PAD


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="FER2013-layout npz")
    src.add_argument(
        "--photos",
        choices=["select-fit", "select-check", "select"],
        help="real photos of this part of the selection half (never the report half)",
    )
    src.add_argument(
        "--image-folder",
        type=Path,
        help="your own full frames or photos, DIR/<label>/*.jpg (one face each, the largest "
        "is taken): fine-tuning crops cut as the daemon will cut your camera's faces",
    )
    p.add_argument("--out", help="npz to write")
    p.add_argument("--for", dest="model", default="edged_fer", help="catalogue model whose crop")
    p.add_argument("--crop", help="CropSpec JSON instead of the model's (e.g. for a new model)")
    p.add_argument("--detectors", default="yunet,scrfd_500m", help="chain, first that finds one")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--framing", action="store_true", help="report FER2013's framing and stop")
    p.add_argument("--limit", type=int, default=0, help="first N images only")
    a = p.parse_args(argv)

    from edged.models.catalog import CATALOG, CropSpec
    from edged.models.crops import face_crops
    from edged_train.data import labelled_files

    spec = CropSpec.from_json(json.loads(a.crop)) if a.crop else CATALOG[a.model].crops[0]
    if a.photos or a.image_folder:
        if a.framing or not a.out:
            p.error("--photos/--image-folder need --out and do not take --framing")
        dets = build_detectors(a.detectors.split(","), a.models_dir)
        if a.photos:
            source, items = f"facial_expressions:{a.photos}", selection_photos(a.photos)
        else:
            source, items = f"image_folder:{a.image_folder.name}", labelled_files(a.image_folder)
        return photo_crops(source, items, dets, spec, Path(a.out))

    d = np.load(a.data)
    images = d["images"]
    n = len(images) if not a.limit else min(a.limit, len(images))
    names = a.detectors.split(",")

    if a.framing:
        for name in names:
            dets = build_detectors([name], a.models_dir)
            lm, bx = [], []
            for im in images[:n]:
                _, box, pts = detect(dets, enlarge(im))
                if box is not None:
                    lm.append(to_original(pts) / 48)
                    bx.append(to_original(box.reshape(2, 2)).ravel())
            lm, bx = np.array(lm), np.array(bx)
            w, h = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
            side = np.maximum(w, h)
            print(f"{name}: found {len(lm)} of {n}")
            print(f"  median landmarks (unit): {np.round(np.median(lm, 0), 4).tolist()}")
            print(
                f"  48 / max(w,h): median {np.median(48 / side):.3f}; centre offset "
                f"x {np.median((24 - (bx[:, 0] + bx[:, 2]) / 2) / side):+.3f} "
                f"y {np.median((24 - (bx[:, 1] + bx[:, 3]) / 2) / side):+.3f} (of the side)"
            )
        return 0

    if not a.out:
        p.error("--out is required unless --framing")
    dets = build_detectors(names, a.models_dir)
    crops = np.empty((n, 48, 48), np.uint8)
    found = np.zeros(n, bool)
    by = np.full(n, "", dtype=object)
    boxes = np.full((n, 4), np.nan, np.float32)
    marks = np.full((n, 5, 2), np.nan, np.float32)
    t0 = time.time()
    for i in range(n):
        big = enlarge(images[i])
        name, box, pts = detect(dets, big)
        if box is None:
            crops[i] = images[i]
            continue
        c = face_crops(big, box[None], pts[None], 48, spec)[0]
        crops[i] = cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)
        found[i], by[i] = True, name
        boxes[i] = to_original(box.reshape(2, 2)).ravel()
        marks[i] = to_original(pts)
        if i and i % 5000 == 0:
            print(f"{i}/{n} ({time.time() - t0:.0f} s, found {found[:i].mean() * 100:.1f} %)")
    out = {k: d[k][:n] for k in d.files if k not in ("images", "classes", "ferplus_vote_names")}
    for k in ("classes", "ferplus_vote_names"):
        if k in d.files:
            out[k] = d[k]
    out.update(
        images=crops,
        found=found,
        detector=by.astype(str),
        boxes=boxes,
        landmarks=marks,
        crop=np.array(json.dumps(spec.to_json())),
        source=np.array(str(Path(a.data).name)),
    )
    np.savez_compressed(a.out, **out)
    per = {nm: int((by == nm).sum()) for nm in names}
    print(
        f"wrote {a.out}: {n} images, face found in {found.sum()} ({found.mean() * 100:.1f} %) "
        f"{per}, registered image kept for {n - found.sum()}; {time.time() - t0:.0f} s"
    )
    return 0


def largest(boxes: np.ndarray) -> int:
    """Index of the largest box (N, 4): the labelled person of a photo (as ``eval_emotion``)."""
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


def first_found(detectors, image: np.ndarray):
    """(name, detections) of the first detector of the chain that finds a face (or the last)."""
    for name, det in detectors:
        r = det(image)
        if len(r):
            return name, r
    return detectors[-1][0], r


def selection_photos(part: str) -> list[tuple[Path, str]]:
    """(path, canonical label) of the real photos of a part of the selection half."""
    from emotion_data import load_photos

    return [(ph.path, ph.label) for ph in load_photos(half=part)]


def photo_crops(source: str, items: list[tuple[Path, str]], detectors, spec, out: Path) -> int:
    """Training crops of full photos, cut as the daemon cuts a camera face."""
    from edged.models.crops import face_crops
    from edged_train.data import CANONICAL, FER_CLASSES

    t0 = time.time()
    crops, labels, files, boxes, marks, by = [], [], [], [], [], []
    lost: list[str] = []
    for path, label in items:
        if label not in CANONICAL:
            continue  # contemptuous: no output of a 7-class model
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"unreadable image: {path}")
        name, r = first_found(detectors, img)
        if not len(r):
            lost.append(path.name)
            continue
        i = largest(r.boxes)
        c = face_crops(img, r.boxes[i][None], r.landmarks[i][None], 48, spec)[0]
        crops.append(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY))
        labels.append(CANONICAL.index(label))
        files.append(f"{path.parent.name}/{path.name}")
        boxes.append(r.boxes[i])
        marks.append(r.landmarks[i])
        by.append(name)
    n = len(crops)
    np.savez_compressed(
        out,
        images=np.stack(crops).astype(np.uint8),
        labels=np.asarray(labels, np.int64),
        classes=np.array(FER_CLASSES),
        filenames=np.array(files),
        ferplus_votes=np.full((n, 10), -1, np.int16),
        found=np.ones(n, bool),
        detector=np.array(by),
        boxes=np.stack(boxes).astype(np.float32),
        landmarks=np.stack(marks).astype(np.float32),
        crop=np.array(json.dumps(spec.to_json())),
        source=np.array(source),
    )
    counts = np.bincount(labels, minlength=len(FER_CLASSES)).tolist()
    print(
        f"wrote {out}: {n} photos of {source} ({dict(zip(FER_CLASSES, counts, strict=True))}), "
        f"no face found in {len(lost)} (left out: {lost}); {time.time() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
