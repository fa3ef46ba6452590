"""edged's own emotion models (models/edged_fer): shipped files, sidecar, accuracy smoke test.

v8 (``edged_fer``, ``edged_fer_fast``: one graph) is v7's recipe refit on the whole selection
half of the photos; v7 (``edged_fer_v7``, kept loadable) is three shipped runs (v6 among them)
distilled into v6's network; v6 (``edged_fer_v6``, kept loadable) is four runs (v5 among
them) distilled into v5's network; v5 (``edged_fer_v5``, kept loadable) is three runs on
FER2013 and real photos (v4 among them) distilled into v4's network; v4 (``edged_fer_v4``,
kept loadable) is v3 fine-tuned on FER2013 and real photos, both re-cut by edged's own
detector and alignment; v3 (``edged_fer_v3``, kept loadable) learnt the FER2013 crops alone.
Each runs one pass per aligned 48x48 face (the whole face or its centre 40x40, as its
validation chose). v2 (``edged_fer_v2``, kept loadable) averages ten views of each face
inside its graph (five scales, each mirrored); ``edged_fer_v2_fast`` is the same weights in
one pass. All go through the same loader.

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

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "edged_fer"
ONNX = MODEL_DIR / "edged_fer_v2.onnx"
FAST = MODEL_DIR / "edged_fer_v2_fast.onnx"
SIDECAR = MODEL_DIR / "edged_fer_v2.json"
V3 = MODEL_DIR / "edged_fer_v3.onnx"
V4 = MODEL_DIR / "edged_fer_v4.onnx"
V5 = MODEL_DIR / "edged_fer_v5.onnx"
V6 = MODEL_DIR / "edged_fer_v6.onnx"
V7 = MODEL_DIR / "edged_fer_v7.onnx"
V8 = MODEL_DIR / "edged_fer_v8.onnx"
SHIPPED = {
    "edged_fer_v2": ONNX,
    "edged_fer_v2_fast": FAST,
    "edged_fer_v3": V3,
    "edged_fer_v4": V4,
    "edged_fer_v5": V5,
    "edged_fer_v6": V6,
    "edged_fer_v7": V7,
    "edged_fer": V8,
    "edged_fer_fast": V8,
}
DETECTOR_CROPPED = (V3, V4, V5, V6, V7, V8)
# the views the sidecar's test-time mode names: input sizes, each also mirrored
VIEW_SIZES = (40, 44, 48, 52, 56)
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


def _sidecar_of(name: str) -> dict:
    path = SHIPPED[name]
    return json.loads((SIDECAR if path in (ONNX, FAST) else path.with_suffix(".json")).read_text())


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def clf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A shipped model, loaded the way the daemon loads it: catalogue spec + loader.

    The models directory is empty: a shipped model must not need one.
    """
    from edged.models.catalog import CATALOG
    from edged.models.loader import load_classifier
    from edged.models.providers import SessionFactory

    spec = CATALOG[request.param]
    assert spec.shipped and spec.kind == "emotion"
    return load_classifier(
        spec, tmp_path_factory.mktemp("no_models"), SessionFactory(providers=["cpu"])
    )


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _daemon_input(crops: list[np.ndarray]) -> np.ndarray:
    """The documented preprocessing, written out independently of the package."""
    x = np.stack(
        [
            cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
            for c in crops
        ]
    ).astype(np.float32)[:, None]
    return (x / 255.0 - 0.5) / 0.5


@pytest.mark.parametrize("path", [ONNX, FAST, *DETECTOR_CROPPED], ids=lambda p: p.name)
def test_files_shipped_and_small(path: Path) -> None:
    assert SIDECAR.is_file()
    assert all(p.with_suffix(".json").is_file() for p in DETECTOR_CROPPED)
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size < 10_000_000


def test_sidecar_sha256_matches_both_graphs(sidecar: dict) -> None:
    assert hashlib.sha256(ONNX.read_bytes()).hexdigest() == sidecar["sha256"]
    assert sidecar["fast_variant"]["file"] == FAST.name
    assert hashlib.sha256(FAST.read_bytes()).hexdigest() == sidecar["fast_variant"]["sha256"]


def test_sidecar_records_a_test_time_mode_chosen_on_validation(sidecar: dict) -> None:
    modes = sidecar["val_accuracy_by_mode"]
    chosen = sidecar["test_time_mode"]
    assert chosen == "ms" + "-".join(map(str, VIEW_SIZES)) + "_flip"
    assert modes[chosen] == max(modes.values())
    assert sidecar["fast_variant"]["test_time_mode"] == "full"
    # the single pass is one of the compared modes, and the exported graphs reproduce them
    assert abs(sidecar["fast_variant"]["val_accuracy"] - modes["full"]) < 1e-6
    assert abs(sidecar["val_accuracy"] - modes[chosen]) < 1e-6


@pytest.mark.parametrize("path", DETECTOR_CROPPED, ids=lambda p: p.name)
def test_detector_crop_sidecars_match_the_shipped_graph_and_catalogue(path: Path) -> None:
    from edged.models.catalog import CATALOG, CropSpec

    side = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == side["sha256"]
    # the graph's test-time mode is the one validation (mean per-class recall) ranked first
    modes = side["val_accuracy_by_mode"]
    assert side["train_config"]["select_by"] == "mean_recall"
    assert side["test_time_mode"] in ("full", "center")
    assert modes[side["test_time_mode"]] >= max(modes.values()) - 0.002
    assert CropSpec.from_json(side["face_crop"]) == CATALOG["edged_fer"].crops[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("path", "start"), [(V4, V3), (V5, V4), (V6, V5), (V7, V6)], ids=["v4", "v5", "v6", "v7"]
)
def test_photo_trained_models_learnt_the_selection_half_only(path: Path, start: Path) -> None:
    """v4's to v7's real photos are the ``select-fit`` part: never the report half, never
    the ``select-check`` part they were chosen on; each starts from the model before it."""
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["train_config"]["extra_data"] == ["/tmp/fer/photos_fit.npz"]
    assert "photos_fit.npz" in side["data_sha256"]
    assert side["learnt_from"]["photos_fit.npz"] == "facial_expressions:select-fit"
    assert side["init_checkpoint"]["sha256"] == _sha(start.with_suffix(".pt"))


def test_the_refit_is_v7s_command_with_the_whole_selection_half_as_its_photos() -> None:
    """v8 is v7's command with one change, the photos: all of the selection half (the
    recipe was chosen on ``select-check``, so the shipped model may then learn it too;
    ``tools/fer_crops.py --photos`` cannot cut the report half)."""
    v7, v8 = (json.loads(p.with_suffix(".json").read_text()) for p in (V7, V8))
    assert v8["train_config"]["extra_data"] == ["/tmp/fer/photos_select.npz"]
    assert "photos_select.npz" in v8["data_sha256"]
    assert v8["learnt_from"]["photos_select.npz"] == "facial_expressions:select"
    changed = {k for k in v7["train_config"] if v7["train_config"][k] != v8["train_config"][k]}
    assert changed <= {"extra_data", "version", "out", "time_budget_min"}
    assert v8["init_checkpoint"] == v7["init_checkpoint"] and v8["teacher"] == v7["teacher"]
    assert v8["data_sha256"]["train_align.npz"] == v7["data_sha256"]["train_align.npz"]


@pytest.mark.parametrize(
    ("path", "runs", "first"),
    [(V5, 3, V4), (V6, 4, V5), (V7, 3, V6), (V8, 3, V6)],
    ids=["v5", "v6", "v7", "v8"],
)
def test_distilled_models_are_one_network_taught_by_several_runs(
    path: Path, runs: int, first: Path
) -> None:
    """v5's teachers are v4 and two other runs, v6's are v5 and three other runs, v7's (and
    v8's) are v6, v5 and v4: one set of weights of the same size as the model each started from."""
    side = json.loads(path.with_suffix(".json").read_text())
    teachers = side["teacher"]
    assert len(teachers) == runs and len({t["sha256"] for t in teachers}) == runs
    assert teachers[0]["sha256"] == _sha(first.with_suffix(".pt"))
    assert side["params"] == json.loads(first.with_suffix(".json").read_text())["params"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_sidecar_matches_catalogue(name: str) -> None:
    from edged.models.catalog import CATALOG

    sidecar = _sidecar_of(name)
    spec = CATALOG[name]
    assert spec.files == (f"edged_fer/{SHIPPED[name].name}",)
    assert list(spec.labels) == sidecar["labels"]
    assert list(spec.mean) == sidecar["mean"] and list(spec.std) == sidecar["std"]
    assert spec.input_size == sidecar["size"] == 48
    assert sidecar["input"] == "input" and sidecar["output"] == "logits"
    for key in ("seed", "train_config", "data_sha256", "val_accuracy", "torch_version"):
        assert key in sidecar


@pytest.mark.parametrize("path", [ONNX, FAST, *DETECTOR_CROPPED], ids=lambda p: p.name)
def test_onnx_contract(path: Path) -> None:
    sess = _session(path)
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
    crops = fer_subset[0][::25]
    sess = _session(SHIPPED[clf.spec.name])
    z = sess.run(["logits"], {"input": _daemon_input(crops)})[0].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = [clf.labels.index(FER_TO_CANONICAL[n]) for n in _sidecar_of(clf.spec.name)["labels"]]
    np.testing.assert_allclose(np.asarray(clf(crops))[:, order], p, atol=1e-4)


def test_multi_view_graph_is_the_mean_of_single_passes_over_scaled_and_mirrored_views(
    fer_subset,
) -> None:
    """What edged_fer computes, spelled out: the fast graph's logits averaged over the input
    resized (bilinear, half-pixel centres) to each size of the mode, and mirrored."""
    import onnx
    import onnxruntime as ort

    x = _daemon_input(fer_subset[0][::7])
    full = _session(ONNX)
    # the fast graph is fully convolutional up to a global pooling: free its 48x48 input
    # shape so that it runs on each view size
    graph = onnx.load(str(FAST))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.graph.value_info[:]
    fast = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    views = []
    for size in VIEW_SIZES:
        v = (
            x
            if size == 48
            else np.stack(
                [cv2.resize(im[0], (size, size), interpolation=cv2.INTER_LINEAR) for im in x]
            )[:, None]
        )
        views += [v, np.ascontiguousarray(v[..., ::-1])]
    expected = np.mean([fast.run(["logits"], {"input": v})[0] for v in views], axis=0)
    got = full.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # and the views matter: a single pass is measurably different
    assert np.abs(fast.run(["logits"], {"input": x})[0] - got).max() > 1e-2


def test_lite_phase_uses_the_shipped_models_accurate_first() -> None:
    from edged.models.catalog import PHASES

    assert PHASES["lite"].classifiers == ("edged_fer", "edged_fer_v2_fast")
