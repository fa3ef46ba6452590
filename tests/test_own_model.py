"""edged's own emotion model (models/edged_fer): shipped file, sidecar, accuracy smoke test.

Uses FER2013 test images from ``../shared/datasets`` (or ``$EDGED_SHARED``), read in place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "models" / "edged_fer"
ONNX = MODEL_DIR / "edged_fer_v1.onnx"
SIDECAR = MODEL_DIR / "edged_fer_v1.json"
FER_TO_CANONICAL = {
    "angry": "angry",
    "disgust": "disgusted",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprised",
}
PER_CLASS = 50


def _shared() -> Path:
    root = Path(os.environ.get("EDGED_SHARED", REPO.parent / "shared"))
    test_npz = root / "datasets" / "fer2013_test.npz"
    if not test_npz.is_file():
        pytest.fail(
            f"FER2013 test data not found at {test_npz}: set EDGED_SHARED or put shared/ beside "
            "the repository (CI always has it)",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="module")
def fer_subset() -> tuple[list[np.ndarray], list[str]]:
    """First PER_CLASS PrivateTest images of each class (350, balanced), as BGR crops."""
    with np.load(_shared() / "datasets" / "fer2013_test.npz") as d:
        images, y = d["images"], d["labels"]
        classes = [str(c) for c in d["classes"]]
        private = np.array(["PrivateTest" in str(f) for f in d["filenames"]])
    idx = np.concatenate(
        [np.flatnonzero((y == c) & private)[:PER_CLASS] for c in range(len(classes))]
    )
    crops = [cv2.cvtColor(images[i], cv2.COLOR_GRAY2BGR) for i in idx]
    labels = [FER_TO_CANONICAL[classes[y[i]]] for i in idx]
    return crops, labels


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads(SIDECAR.read_text())


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory):
    """The shipped model, loaded the way the daemon loads it: catalogue spec + loader.

    The models directory is empty: a shipped model must not need one.
    """
    from edged.catalog import CATALOG
    from edged.loader import load_classifier
    from edged.providers import SessionFactory

    spec = CATALOG["edged_fer"]
    assert spec.shipped and spec.kind == "emotion"
    return load_classifier(
        spec, tmp_path_factory.mktemp("no_models"), SessionFactory(providers=["cpu"])
    )


def test_files_shipped_and_small() -> None:
    assert ONNX.is_file(), f"{ONNX} missing"
    assert SIDECAR.is_file(), f"{SIDECAR} missing"
    assert ONNX.stat().st_size < 10_000_000


def test_sidecar_sha256_matches(sidecar: dict) -> None:
    assert hashlib.sha256(ONNX.read_bytes()).hexdigest() == sidecar["sha256"]


def test_sidecar_matches_catalogue(sidecar: dict) -> None:
    from edged.catalog import CATALOG

    spec = CATALOG["edged_fer"]
    assert spec.files == ("edged_fer/edged_fer_v1.onnx",)
    assert list(spec.labels) == sidecar["labels"]
    assert list(spec.mean) == sidecar["mean"] and list(spec.std) == sidecar["std"]
    assert spec.input_size == sidecar["size"] == 48
    assert sidecar["input"] == "input" and sidecar["output"] == "logits"
    for key in ("seed", "train_config", "data_sha256", "val_accuracy", "torch_version"):
        assert key in sidecar


def test_onnx_contract() -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "input" and inp.shape[1:] == [1, 48, 48] and isinstance(inp.shape[0], str)
    assert out.name == "logits" and out.shape[1] == 7
    y = sess.run(["logits"], {"input": np.zeros((3, 1, 48, 48), np.float32)})[0]
    assert y.shape == (3, 7) and np.isfinite(y).all()


def test_far_above_chance_through_loader(clf, fer_subset) -> None:
    crops, labels = fer_subset
    probs = np.asarray(clf(crops))
    assert probs.shape == (len(crops), len(clf.labels))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    pred = np.array(clf.labels)[probs.argmax(1)]
    acc = float((pred == np.array(labels)).mean())
    # 7 balanced classes: chance is 14%; the shipped model scores far higher
    assert acc >= 0.5, f"accuracy {acc:.3f} on {len(crops)} FER2013 PrivateTest images"


def test_batched_equals_one_by_one(clf, fer_subset) -> None:
    crops = fer_subset[0][::10]
    batched = np.asarray(clf(crops))
    single = np.concatenate([np.asarray(clf([c])) for c in crops])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_loader_matches_raw_onnx_with_daemon_preprocessing(clf, fer_subset) -> None:
    """The package path gives what the exported graph gives on the documented preprocessing."""
    import onnxruntime as ort

    crops = fer_subset[0][::25]
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    x = np.stack(
        [
            cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
            for c in crops
        ]
    ).astype(np.float32)[:, None]
    x = (x / 255.0 - 0.5) / 0.5
    z = sess.run(["logits"], {"input": x})[0].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = [
        clf.labels.index(FER_TO_CANONICAL[n]) for n in json.loads(SIDECAR.read_text())["labels"]
    ]
    np.testing.assert_allclose(np.asarray(clf(crops))[:, order], p, atol=1e-4)


def test_lite_phase_uses_the_shipped_model() -> None:
    from edged.catalog import PHASES

    assert PHASES["lite"].classifiers[0] == "edged_fer"
