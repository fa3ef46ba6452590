#!/usr/bin/env python3
"""Evaluate a facial-emotion classifier on FER2013 (npz) or on an image folder.

By default the classifier is loaded through edged's own catalogue and loader, so the figures
are produced with exactly the preprocessing the daemon uses: every image is handed to the
classifier as a BGR uint8 face crop (FER2013's gray images are converted with
cv2.COLOR_GRAY2BGR). Labels are compared as canonical edged labels
(neutral, happy, sad, angry, fearful, disgusted, surprised, contemptuous).

  python tools/eval_emotion.py --classifier edged_fer --data ../shared/datasets/fer2013_test.npz
  python tools/eval_emotion.py --classifier edged_fer --data ../shared/datasets/fer2013_test.npz \
      --split PrivateTest --dedup-against ../shared/datasets/fer2013_train.npz --json out.json
  python tools/eval_emotion.py --onnx models/edged_fer/edged_fer_v2.onnx --image-folder DIR \
      --plot cm.png
  python tools/eval_emotion.py --onnx models/edged_fer/edged_fer_v2.onnx --bench   # CPU latency

``--pipeline`` measures what a user sees: full photographs go through the daemon's own
detector, crop and classifier (``edged.pipeline.build_pipeline`` with the config's phase),
the largest face of each photo is compared with its label, and a photo where no face is
found counts as an error (column ``no_face``). Without ``--image-folder`` it runs on the real
photos of ``../shared/datasets/facial_expressions`` split by person (``--half select`` to
choose, ``--half report`` to report; see tools/emotion_data.py):

  python tools/eval_emotion.py --pipeline --half select --classifier edged_fer
  python tools/eval_emotion.py --pipeline --half report --phase lite --json report.json
  python tools/eval_emotion.py --pipeline --classifier edged_fer \
      --data ../shared/datasets/fer2013_test.npz --split PrivateTest
  python tools/eval_emotion.py --pipeline --half select-check --candidate run/edged_fer_v6.onnx
  python tools/eval_emotion.py --pipeline --half select-check --candidate run/edged_fer_v8.onnx \
      --against edged_fer

``--against NAME`` runs a second catalogue model on the same photos and prints a paired
bootstrap over people (2,000 resamples of the photos' people, each with all their photos):
the macro-F1 and accuracy differences with a 95 % interval. An interval that spans 0 is a
difference these photos cannot tell apart.

``--candidate FILE`` runs a model made by tools/train_emotion.py through the same pipeline
before it has a name: it takes the catalogue's ``edged_fer_finetuned`` slot (family ``fer``,
the detector-made crop ``V3_CROPS``) in a temporary models directory, and is refused when its
sidecar's ``face_crop`` is not that crop (the pipeline would cut its faces differently from
its training crops).

``--onnx PATH`` evaluates a raw ONNX file described by its JSON sidecar (PATH with .json),
re-implementing the daemon's preprocessing (gray -> resize INTER_AREA -> /255 -> (x-mean)/std),
for use without the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edged.models.catalog import CANONICAL_LABELS as CANONICAL  # noqa: E402  (after REPO)
from edged.models.catalog import LABEL_ALIASES  # noqa: E402


def canon(name: str) -> str:
    key = str(name).strip().lower()
    if key not in LABEL_ALIASES:
        raise ValueError(f"unknown emotion label {name!r}")
    return LABEL_ALIASES[key]


# ------------------------------------------------------------------------------------ data
def load_npz(path, split="all", dedup_against=None):
    d = np.load(path)
    images, labels = d["images"], d["labels"]
    classes = [str(c) for c in d["classes"]]
    names = d["filenames"] if "filenames" in d.files else np.array([""] * len(images))
    keep = np.ones(len(images), bool)
    if split != "all":
        keep &= np.array([split in str(n) for n in names])
        if not keep.any():
            raise SystemExit(f"no images of split {split!r} in {path}")
    info = {"dataset": str(path), "split": split, "n_split": int(keep.sum())}
    if dedup_against:
        train = np.load(dedup_against)["images"]
        seen = {hashlib.sha1(im.tobytes()).hexdigest() for im in train}
        dup = np.array([hashlib.sha1(im.tobytes()).hexdigest() in seen for im in images])
        info["dedup_against"] = str(dedup_against)
        info["dropped_pixel_identical_to_train"] = int((dup & keep).sum())
        keep &= ~dup
    y = np.array([canon(classes[i]) for i in labels[keep]])
    return images[keep], y, info


def load_folder(root):
    import cv2

    from edged_train.data import labelled_files

    images, labels = [], []
    for f, lab in labelled_files(root):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)  # BGR uint8, like a face crop
        if img is None:
            print(f"unreadable, skipped: {f}", file=sys.stderr)
            continue
        images.append(img)
        labels.append(lab)
    if not images:
        raise SystemExit(f"no images under {root}")
    return (
        images,
        np.array(labels),
        {"dataset": str(root), "split": "folder", "n_split": len(images)},
    )


def to_bgr_crops(images):
    """FER2013's gray arrays -> list of BGR uint8 crops, as the daemon hands them over."""
    import cv2

    return [cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else im for im in images]


# ------------------------------------------------------------------------------ classifiers
class OnnxClassifier:
    """Raw ONNX + sidecar; the daemon's preprocessing re-implemented (use without the package)."""

    def __init__(self, path, threads=0):
        import onnxruntime as ort

        self.path = Path(path)
        side = self.path.with_suffix(".json")
        if not side.exists() and self.path.stem.endswith("_fast"):
            # a single-pass graph is described by its multi-view sibling's sidecar
            side = self.path.with_name(self.path.stem[: -len("_fast")] + ".json")
        self.meta = json.loads(side.read_text()) if side.exists() else {}
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.input = self.meta.get("input", inp.name)
        self.output = self.meta.get("output", self.sess.get_outputs()[0].name)
        self.size = int(self.meta.get("size", inp.shape[-1]))
        self.channels = int(self.meta.get("channels", inp.shape[1]))
        self.mean = np.array(self.meta.get("mean", [0.5] * self.channels), np.float32).reshape(
            1, -1, 1, 1
        )
        self.std = np.array(self.meta.get("std", [0.5] * self.channels), np.float32).reshape(
            1, -1, 1, 1
        )
        if "labels" not in self.meta:
            raise SystemExit(f"{side} missing: need the sidecar's labels to evaluate {path}")
        self.labels = [canon(n) for n in self.meta["labels"]]

    def preprocess(self, crops):
        import cv2

        out = []
        for c in crops:
            if self.channels == 1:
                g = cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) if c.ndim == 3 else c
                g = cv2.resize(g, (self.size, self.size), interpolation=cv2.INTER_AREA)
                out.append(g[None])
            else:
                rgb = cv2.cvtColor(c, cv2.COLOR_BGR2RGB)
                rgb = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)
                out.append(rgb.transpose(2, 0, 1))
        x = np.stack(out).astype(np.float32) / 255.0
        return (x - self.mean) / self.std

    def logits(self, x):
        return self.sess.run([self.output], {self.input: x})[0]

    def __call__(self, crops):
        z = self.logits(self.preprocess(crops)).astype(np.float64)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


def load_package_classifier(name, models_dir=None, providers=("cpu",), threads=0):
    """The daemon's own loader: catalogue spec -> validated sessions -> classifier class.

    edged.models.catalog.CATALOG[name] +
    edged.models.loader.load_classifier(spec, models_dir, factory),
    i.e. the same preprocessing (edged.models.classification.*) the pipeline runs.
    """
    from edged.models.catalog import CATALOG
    from edged.models.loader import load_classifier
    from edged.models.providers import SessionFactory

    spec = CATALOG.get(name)
    if spec is None or spec.kind != "emotion":
        known = sorted(n for n, s in CATALOG.items() if s.kind == "emotion")
        raise SystemExit(
            f"{name!r} is not an emotion model of edged.models.catalog.CATALOG; known: {known}"
        )
    if models_dir is None and not spec.shipped:
        raise SystemExit(f"{name!r} is not shipped with edged: give --models-dir (the seed layout)")
    factory = SessionFactory(providers=list(providers), intra_op_threads=threads)
    return load_classifier(spec, Path(models_dir or "."), factory)


# ---------------------------------------------------------------------------------- metrics
NO_FACE = "no_face"


def build_eval_pipeline(a):
    """The daemon's pipeline for ``--pipeline``: config's phase/overrides, CPU by default."""
    import tempfile

    from edged.config import PipelineSettings, Settings
    from edged.models.providers import SessionFactory
    from edged.pipeline import build_pipeline

    if a.models_dir is None:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_models_dir  # the tests' seed layout of ../shared models
        from emotion_data import shared_root

        models_dir = make_models_dir(shared_root(), Path(tempfile.mkdtemp(prefix="edged-eval-")))
    elif a.candidate:  # never write into the user's models directory: link its folders
        models_dir = linked_models_dir(Path(a.models_dir))
    else:
        models_dir = Path(a.models_dir)
    if a.candidate:
        place_candidate(Path(a.candidate), models_dir)
    classifier = CANDIDATE_SLOT if a.candidate else a.classifier
    ps = PipelineSettings(
        phase=a.phase,
        providers=a.providers.split(","),
        intra_op_threads=a.threads,
        crop=a.crop,
        crop_margin=a.crop_margin,
        **({"detector": a.detector} if a.detector else {}),
        **({"classifier": classifier} if classifier else {}),
    )
    settings = Settings(pipeline=ps)
    factory = SessionFactory(providers=ps.providers, intra_op_threads=a.threads)
    return build_pipeline(settings, factory, models_dir=models_dir)


CANDIDATE_SLOT = "edged_fer_finetuned"


def linked_models_dir(models_dir: Path) -> Path:
    """A temporary models directory whose folders link to ``models_dir``'s, except the
    candidate slot's, which ``place_candidate`` then fills (nothing is copied or changed)."""
    import tempfile

    from edged.models.catalog import CATALOG

    slot_top = Path(CATALOG[CANDIDATE_SLOT].files[0]).parts[0]
    tmp = Path(tempfile.mkdtemp(prefix="edged-eval-"))
    for entry in models_dir.iterdir():
        if entry.name != slot_top:
            (tmp / entry.name).symlink_to(entry.resolve())
    return tmp


def place_candidate(onnx: Path, models_dir: Path) -> None:
    """Put ``onnx`` where the catalogue's ``edged_fer_finetuned`` entry loads it from, after
    checking that its training crops (sidecar ``face_crop``) are the ones that slot cuts."""
    import shutil

    from edged.models.catalog import CATALOG, CropSpec

    spec = CATALOG[CANDIDATE_SLOT]
    sidecar = onnx.with_suffix(".json")
    if not onnx.is_file() or not sidecar.is_file():
        raise SystemExit(f"--candidate needs {onnx} and its sidecar {sidecar}")
    meta = json.loads(sidecar.read_text())
    crop = meta.get("face_crop")
    if crop is None or CropSpec.from_json(crop) != spec.crops[0]:
        raise SystemExit(
            f"{sidecar}: face_crop {crop} is not {spec.crops[0].to_json()}, the crop of the "
            f"{CANDIDATE_SLOT} slot; evaluate it under a catalogue entry with its own crop"
        )
    dest = spec.paths(models_dir)[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx, dest)


def evaluate_pipeline(pipe, items, y_true):
    """Metrics of the main face of each photo (``no_face`` where none is found); the
    per-photo labels are in ``res["_pred"]`` (not written to JSON)."""
    t0 = time.perf_counter()
    preds = predict_pipeline(pipe, items)
    wall = time.perf_counter() - t0
    res = metrics(y_true, preds, pipeline_labels(pipe), wall)
    res["no_face"] = int(sum(p == NO_FACE for p in preds))
    res["_pred"] = preds
    return res


def pipeline_labels(pipe):
    return [canon(n) for n in pipe.classifier.labels] + [NO_FACE]


def predict_pipeline(pipe, items):
    """Labels of the main face of each photo (``no_face`` where none is found).

    ``items`` are image paths (photos: the largest face is the labelled person) or FER2013
    48x48 arrays, which are enlarged exactly as ``tools/fer_crops.py`` does for training
    (the face nearest the centre is the labelled one).
    """
    import cv2
    from fer_crops import enlarge, largest, nearest_centre

    preds = []
    for item in items:
        if isinstance(item, np.ndarray):
            img = enlarge(item)
        else:
            img = cv2.imread(str(item), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"unreadable image: {item}")
        faces = pipe.process_one(img).faces
        if not faces:
            preds.append(NO_FACE)
            continue
        boxes = np.array([f.bbox for f in faces], np.float32)
        if isinstance(item, np.ndarray):
            face = faces[nearest_centre(boxes, img.shape[1], img.shape[0])]
        else:  # the labelled person of a photo: as tools/fer_crops.py --photos cuts it
            face = faces[largest(boxes)]
        preds.append(canon(face.emotion))
    return np.array(preds)


def macro_f1_of_counts(cm):
    """Macro-F1 of square confusion matrices ``cm[..., true, pred]`` (any leading batch
    axes), averaged over the classes present in the truth, exactly as :func:`metrics`
    averages them (a class nobody showed has no F1, rather than an F1 of 0)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    present = support > 0
    return (f1 * present).sum(axis=-1) / present.sum(axis=-1)


def paired_bootstrap(y_true, pred_a, pred_b, groups, labels, resamples=2000, seed=0):
    """How sure is "A beats B" on these photos? Resample the *people* (all photos of a
    drawn person together, since one person's photos are not independent) with replacement,
    and recompute both models' macro-F1 and accuracy on each resample. Returns the observed
    differences A - B, their 2.5/97.5 % percentiles and the share of resamples where A is
    ahead: a difference whose interval spans 0 is not one these photos can tell apart.

    A resample is a count of draws per person, so each model's confusion matrix of a
    resample is those counts times the per-person confusion matrices: one matrix product
    for all resamples instead of a Python loop over photos."""
    rng = np.random.default_rng(seed)
    people = sorted(set(groups))
    classes = sorted({*CANONICAL, NO_FACE, *labels, *y_true, *pred_a, *pred_b})
    k = len(classes)
    at = {c: i for i, c in enumerate(classes)}
    t = np.array([at[c] for c in y_true])
    index = {g: i for i, g in enumerate(people)}
    person = np.array([index[g] for g in groups], int)

    def per_person(pred):  # [people, k*k]: each person's confusion matrix, flattened
        p = np.array([at[c] for c in pred])
        out = np.zeros((len(people), k * k))
        np.add.at(out, (person, t * k + p), 1)
        return out

    cm_a, cm_b = per_person(pred_a), per_person(pred_b)
    draws = np.stack(  # [resamples, people]: how often each person was drawn
        [
            np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people))
            for _ in range(resamples)
        ]
    ).astype(float)
    a = (draws @ cm_a).reshape(resamples, k, k)
    b = (draws @ cm_b).reshape(resamples, k, k)
    n = a.sum(axis=(1, 2))
    accuracy_a = np.trace(a, axis1=1, axis2=2) / n
    accuracy_b = np.trace(b, axis1=1, axis2=2) / n
    drawn = {
        "macro_f1": macro_f1_of_counts(a) - macro_f1_of_counts(b),
        "accuracy": accuracy_a - accuracy_b,
    }
    observed = {
        "macro_f1": metrics(y_true, pred_a, labels)["macro_f1"]
        - metrics(y_true, pred_b, labels)["macro_f1"],
        "accuracy": float((pred_a == y_true).mean() - (pred_b == y_true).mean()),
    }
    out = {"resamples": resamples, "people": len(people), "seed": seed}
    for key, v in drawn.items():
        out[key] = {
            "difference": observed[key],
            "interval_95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))],
            "share_ahead": float((v > 0).mean()),
        }
    return out


def print_comparison(cmp, a_name, b_name):
    print(
        f"paired bootstrap over people ({cmp['people']} people, {cmp['resamples']} resamples): "
        f"{a_name} minus {b_name}"
    )
    for key in ("macro_f1", "accuracy"):
        c = cmp[key]
        lo, hi = c["interval_95"]
        print(
            f"  {key:<9} {c['difference'] * 100:+6.2f} points, 95 % interval "
            f"[{lo * 100:+.2f}, {hi * 100:+.2f}], "
            f"ahead in {c['share_ahead'] * 100:.1f} % of resamples"
        )


def evaluate(clf, images, y_true, batch_size=256):
    crops = to_bgr_crops(images) if isinstance(images, np.ndarray) else images
    labels = [canon(n) for n in clf.labels]
    preds = []
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        p = np.asarray(clf(crops[i : i + batch_size]))
        if p.shape != (len(crops[i : i + batch_size]), len(labels)):
            raise SystemExit(
                f"classifier returned shape {p.shape}, "
                f"expected ({len(crops[i : i + batch_size])}, {len(labels)})"
            )
        preds.append(p.argmax(1))
    wall = time.perf_counter() - t0
    y_pred = np.array(labels)[np.concatenate(preds)]
    return metrics(y_true, y_pred, labels, wall)


def metrics(y_true, y_pred, model_labels, wall=None):
    true_classes = [c for c in CANONICAL if c in set(y_true)]
    cols = true_classes + [
        c for c in [*CANONICAL, NO_FACE] if c in model_labels and c not in true_classes
    ]
    cm = np.zeros((len(true_classes), len(cols)), int)
    ci = {c: j for j, c in enumerate(cols)}
    ri = {c: j for j, c in enumerate(true_classes)}
    for t, p in zip(y_true, y_pred, strict=True):
        cm[ri[t], ci[p]] += 1
    recall, precision, f1 = {}, {}, {}
    for c in true_classes:
        tp = cm[ri[c], ci[c]]
        support = cm[ri[c]].sum()
        predicted = cm[:, ci[c]].sum()
        recall[c] = tp / support if support else 0.0
        precision[c] = tp / predicted if predicted else 0.0
        f1[c] = (
            2 * precision[c] * recall[c] / (precision[c] + recall[c])
            if precision[c] + recall[c]
            else 0.0
        )
    res = {
        "n": len(y_true),
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(np.mean(list(f1.values()))),
        "mean_recall": float(np.mean(list(recall.values()))),
        "per_class_recall": {c: float(v) for c, v in recall.items()},
        "per_class_f1": {c: float(v) for c, v in f1.items()},
        "support": {c: int(cm[ri[c]].sum()) for c in true_classes},
        "confusion_matrix": {"rows_true": true_classes, "cols_pred": cols, "counts": cm.tolist()},
        "not_in_model": [c for c in true_classes if c not in model_labels],
        "confusion_matrix_note": "no_face: no face found in the photo (counted as an error)",
    }
    if wall is not None:
        res["wall_s"] = round(wall, 2)
    return res


def print_report(res, title):
    print(f"== {title}")
    print(
        f"images {res['n']}  accuracy {res['accuracy'] * 100:.2f}%  "
        f"macro-F1 {res['macro_f1'] * 100:.2f}%  "
        f"mean recall {res['mean_recall'] * 100:.2f}%"
    )
    if res["not_in_model"]:
        print(f"  (classes the model cannot output: {res['not_in_model']})")
    if "no_face" in res:
        print(f"  photos where no face was found (counted as errors): {res['no_face']}")
    print("per-class recall / F1 / support:")
    for c, r in res["per_class_recall"].items():
        print(
            f"  {c:<13} {r * 100:6.2f}%  {res['per_class_f1'][c] * 100:6.2f}%  {res['support'][c]}"
        )
    cmd = res["confusion_matrix"]
    w = max(len(c) for c in cmd["cols_pred"]) + 1
    print("confusion matrix (rows: true, columns: predicted):")
    print(" " * 14 + "".join(f"{c[:w]:>{w}}" for c in cmd["cols_pred"]))
    for c, row in zip(cmd["rows_true"], cmd["counts"], strict=True):
        print(f"  {c:<12}" + "".join(f"{v:>{w}}" for v in row))


def plot(res, path, title):
    cmd = res["confusion_matrix"]
    cm = np.array(cmd["counts"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    fig, ax = plt.subplots(
        figsize=(1 + 0.9 * len(cmd["cols_pred"]), 1 + 0.8 * len(cmd["rows_true"]))
    )
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cmd["cols_pred"])), cmd["cols_pred"], rotation=45, ha="right")
    ax.set_yticks(range(len(cmd["rows_true"])), cmd["rows_true"])
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{norm[i, j] * 100:.0f}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{title}\nacc {res['accuracy'] * 100:.2f}%  macro-F1 {res['macro_f1'] * 100:.2f}%",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return True


# ---------------------------------------------------------------------------------- latency
def bench(onnx_path, threads_list=(1, 2), repeats=200, batch=32):
    """onnxruntime CPU latency of the raw model (preprocessing excluded)."""
    out = {}
    rng = np.random.default_rng(0)
    for th in threads_list:
        clf = OnnxClassifier(onnx_path, threads=th)
        x1 = rng.standard_normal((1, clf.channels, clf.size, clf.size)).astype(np.float32)
        xb = rng.standard_normal((batch, clf.channels, clf.size, clf.size)).astype(np.float32)
        for _ in range(20):
            clf.logits(x1)
        t1 = []
        for _ in range(repeats):
            t = time.perf_counter()
            clf.logits(x1)
            t1.append(time.perf_counter() - t)
        for _ in range(3):
            clf.logits(xb)
        tb = []
        for _ in range(max(10, repeats // 8)):
            t = time.perf_counter()
            clf.logits(xb)
            tb.append(time.perf_counter() - t)
        out[f"threads_{th}"] = {
            "batch1_median_ms": round(float(np.median(t1)) * 1e3, 3),
            f"batch{batch}_per_face_median_ms": round(float(np.median(tb)) * 1e3 / batch, 3),
        }
        print(
            f"onnxruntime CPU, {th} thread(s): batch 1 median "
            f"{out[f'threads_{th}']['batch1_median_ms']:.3f} ms, batch {batch} "
            f"{out[f'threads_{th}'][f'batch{batch}_per_face_median_ms']:.3f} ms per face"
        )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--classifier",
        help="emotion model name in edged.models.catalog.CATALOG (default edged_fer), "
        "loaded by the package exactly as the daemon loads it",
    )
    g.add_argument(
        "--onnx", help="raw ONNX file with its JSON sidecar, evaluated without the package"
    )
    d = p.add_mutually_exclusive_group()
    d.add_argument("--data", help="FER2013-layout npz (images, labels, classes, filenames)")
    d.add_argument("--image-folder", help="folder with one sub-folder per emotion label")
    p.add_argument("--split", choices=["all", "PrivateTest", "PublicTest"], default="all")
    pp = p.add_argument_group("--pipeline: full photos through detector + crop + classifier")
    pp.add_argument("--pipeline", action="store_true", help="run the daemon's whole pipeline")
    pp.add_argument(
        "--half",
        choices=["select", "report", "all", "select-fit", "select-check"],
        default="select",
        help="half of the real photos (split by person; select-fit/select-check are the "
        "selection half's two parts, see tools/emotion_data.py); default select",
    )
    pp.add_argument(
        "--candidate",
        help="an edged_fer-family ONNX file (with its JSON sidecar) evaluated through the "
        "pipeline in the edged_fer_finetuned slot (see above)",
    )
    pp.add_argument(
        "--against",
        help="a catalogue emotion model to compare with on the same photos: prints both and a "
        "paired bootstrap over people of the macro-F1 and accuracy differences",
    )
    pp.add_argument(
        "--allow-learnt",
        action="store_true",
        help="measure a model on photos its sidecar says it learnt (a training-fit figure; "
        "refused otherwise)",
    )
    pp.add_argument("--phase", default="lite", help="phase whose chains are used (default lite)")
    pp.add_argument("--detector", help="detector name (overrides the phase)")
    pp.add_argument(
        "--crop", choices=["auto", "model", "box", "align"], default="auto", help="crop mode"
    )
    pp.add_argument(
        "--crop-margin",
        type=float,
        default=0.0,
        help="grow the model's crop window by 1+2*M (experiments; default 0: the model's own)",
    )
    p.add_argument(
        "--dedup-against",
        help="also drop images pixel-identical to any image of this npz (e.g. train)",
    )
    p.add_argument(
        "--limit-per-class", type=int, default=0, help="first N images of each class only"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--plot", help="write a confusion-matrix PNG (needs matplotlib)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        help="write the metrics as JSON to PATH (or stdout with no PATH)",
    )
    p.add_argument(
        "--bench", action="store_true", help="measure onnxruntime CPU latency (with --onnx)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime intra-op threads (0 = onnxruntime's default)",
    )
    p.add_argument(
        "--models-dir",
        help="models directory in the seed layout (for models not shipped with edged)",
    )
    p.add_argument(
        "--providers", default="cpu", help="execution providers for --classifier, e.g. cuda,cpu"
    )
    a = p.parse_args(argv)

    result = {}
    if a.bench:
        if not a.onnx:
            p.error("--bench needs --onnx")
        result["latency"] = bench(a.onnx)
        if not (a.data or a.image_folder):
            if a.json:
                _dump(result, a.json)
            return 0
    if a.pipeline:
        return main_pipeline(a, p)
    if a.candidate:
        p.error("--candidate goes with --pipeline")
    if not (a.data or a.image_folder):
        p.error("give --data NPZ or --image-folder DIR")

    if a.onnx:
        clf = OnnxClassifier(a.onnx, threads=a.threads)
        source = {
            "onnx": str(a.onnx),
            "path": "raw onnxruntime (tools/eval_emotion.py preprocessing)",
        }
    else:
        name = a.classifier or "edged_fer"
        clf = load_package_classifier(name, a.models_dir, a.providers.split(","), a.threads)
        source = {
            "classifier": name,
            "path": "edged.models.loader.load_classifier (daemon preprocessing)",
            "provider": getattr(clf, "provider", None),
        }

    if a.data:
        images, y, info = load_npz(a.data, a.split, a.dedup_against)
    else:
        if a.split != "all" or a.dedup_against:
            p.error("--split/--dedup-against apply to --data npz only")
        images, y, info = load_folder(a.image_folder)
    if a.limit_per_class:
        idx = np.concatenate(
            [np.flatnonzero(y == c)[: a.limit_per_class] for c in CANONICAL if (y == c).any()]
        )
        idx.sort()
        images = images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]
        y = y[idx]
        info["limit_per_class"] = a.limit_per_class

    res = evaluate(clf, images, y, a.batch_size)
    who = source.get("classifier") or Path(source["onnx"]).name
    title = f"{who} on {Path(info['dataset']).name} [{info['split']}]"
    if "dropped_pixel_identical_to_train" in info:
        title += f" de-dup (-{info['dropped_pixel_identical_to_train']})"
    result.update({"source": source, "data": info, **res})
    if a.json != "-":
        print_report(res, title)
    if a.plot:
        result["plot"] = a.plot if plot(res, a.plot, title) else None
    if a.json:
        _dump(result, a.json)
    return 0


def sidecar_of(a, name):
    """The training sidecar of catalogue model ``name`` (``--candidate``: the file's own),
    or None where there is none (a seed model, a stand-in, an imported file)."""
    from edged.models.catalog import CATALOG, shipped_models_dir

    spec = CATALOG[name]
    if a.candidate and name == CANDIDATE_SLOT:
        files = [Path(a.candidate)]
    elif spec.shipped or a.models_dir:  # shipped: edged's own models/, whatever the dir
        files = list(spec.paths(Path(a.models_dir or ".")))
    else:  # the seed layout of ../shared: no training sidecars there
        return None
    for f in files:
        side = f.with_suffix(".json")
        if side.is_file():
            found = json.loads(side.read_text())
            source = found.get("source")  # a quantized model: its source model's training
            if "learnt_from" not in found and isinstance(source, str):
                for root in (side.parent.parent, shipped_models_dir()):
                    trained = (root / source).with_suffix(".json")
                    if trained.is_file():
                        return trained, json.loads(trained.read_text())
            return side, found
    return None


def refuse_learnt(p, a, name, half):
    """Stop before a model is scored on photos it learnt: such a figure measures memory,
    and a choice made on it would pick the model that memorised best."""
    from emotion_data import learnt_parts, parts_of

    found = sidecar_of(a, name)
    if found is None:
        return
    side_path, side = found
    overlap = learnt_parts(side) & parts_of(half)
    if overlap:
        p.error(
            f"{name} learnt the {', '.join(sorted(overlap))} photos ({side_path}: learnt_from "
            f"{side['learnt_from']}), so --half {half} would measure what it memorised; "
            "measure it on photos it never saw (models/README.md says which model is the "
            "reference for select-check), or pass --allow-learnt for a training-fit figure"
        )


def main_pipeline(a, p):
    if a.onnx:
        p.error("--pipeline takes --classifier NAME (catalogue), not --onnx")
    if a.candidate and a.classifier:
        p.error("--candidate takes the edged_fer_finetuned slot: give it without --classifier")
    if a.against and a.data:
        p.error("--against compares on photos (their people, from the file names, are resampled)")
    sys.path.insert(0, str(REPO / "tools"))
    from emotion_data import load_photos, person_of

    if a.data:  # FER2013 faces, enlarged 4x with a border, through the whole pipeline
        images, y, info = load_npz(a.data, a.split, a.dedup_against)
        items = list(zip(images, y, strict=True))
    elif a.image_folder:
        from edged_train.data import labelled_files

        items = labelled_files(a.image_folder)
        info = {"dataset": a.image_folder, "split": "folder", "n_split": len(items)}
    else:
        photos = load_photos(half=a.half)
        items = [(ph.path, ph.label) for ph in photos]
        info = {
            "dataset": "facial_expressions",
            "split": f"{a.half} half (by person)",
            "n_split": len(items),
            "persons": len({ph.person for ph in photos}),
        }
    if a.limit_per_class:
        kept, seen = [], {}
        for f, lab in items:
            if seen.get(lab, 0) < a.limit_per_class:
                kept.append((f, lab))
                seen[lab] = seen.get(lab, 0) + 1
        items = kept
        info["limit_per_class"] = a.limit_per_class
    pipe = build_eval_pipeline(a)
    if not (a.data or a.image_folder or a.allow_learnt):
        refuse_learnt(p, a, pipe.models["classifier"], a.half)
        if a.against:
            refuse_learnt(p, a, a.against, a.half)
    crop = pipe.crop
    source = {
        "phase": a.phase,
        "detector": pipe.models["detector"],
        "classifier": pipe.models["classifier"],
        **({"candidate": a.candidate} if a.candidate else {}),
        "crop": crop.to_json() if crop is not None else None,
        "path": "edged.pipeline.build_pipeline (the daemon's detector, crop, classifier)",
    }
    y_true = np.array([lab for _, lab in items])
    res = evaluate_pipeline(pipe, [f for f, _ in items], y_true)
    pred = res.pop("_pred")
    if a.data:
        info["pipeline_input"] = "48x48 face enlarged 4x, 12 px replicated border (fer_crops)"
    title = (
        f"{source['classifier']} via {source['detector']} on {info['dataset']} "
        f"[{info['split']}] crop={crop.mode if crop else None}"
        f"{f' margin={a.crop_margin}' if a.crop_margin else ''}"
    )
    result = {"source": source, "data": info, **res}
    if a.json != "-":
        print_report(res, title)
    if a.against:
        base = build_eval_pipeline(
            argparse.Namespace(**{**vars(a), "candidate": None, "classifier": a.against})
        )
        base_res = evaluate_pipeline(base, [f for f, _ in items], y_true)
        base_pred = base_res.pop("_pred")
        persons = [person_of(Path(f).name) for f, _ in items]
        labels = sorted(set(pipeline_labels(pipe)) | set(pipeline_labels(base)))
        cmp = paired_bootstrap(y_true, pred, base_pred, persons, labels)
        result["against"] = {"classifier": a.against, **base_res, "comparison": cmp}
        if a.json != "-":
            print_report(base_res, f"{a.against} (--against) on the same photos")
            print_comparison(cmp, source["classifier"], a.against)
    if a.plot:
        result["plot"] = a.plot if plot(res, a.plot, title) else None
    if a.json:
        _dump(result, a.json)
    return 0


def _dump(obj, where):
    text = json.dumps(obj, indent=2)
    if where == "-":
        print(text)
    else:
        Path(where).write_text(text + "\n")
        print(f"metrics written to {where}")


if __name__ == "__main__":
    sys.exit(main())
