"""edged_train end to end: a one-epoch run on a slice of FER2013 exports a graph that the
daemon's loader loads with the spec its sidecar describes, and that computes what the
sidecar says on the daemon's preprocessing.

Torch is a training-only dependency (the ``train`` extra; CI installs ``dev`` only), so the
module is skipped without it. 300 images, one epoch, one thread: seconds on a small CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edged.models.catalog import CATALOG, CropSpec  # noqa: E402
from edged.models.loader import load_classifier  # noqa: E402
from edged.models.providers import SessionFactory  # noqa: E402
from tests.conftest import shared_root  # noqa: E402

N_IMAGES = 300


def _train(*args: str) -> None:
    """One epoch of edged_train on one CPU thread (torch's thread count restored after)."""
    from edged_train.cli import main

    threads = torch.get_num_threads()
    try:
        main([*args, "--epochs", "1", "--batch-size", "64", "--threads", "1", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny FER2013-layout npz carrying a detector-made crop's framing, trained 1 epoch."""
    root = tmp_path_factory.mktemp("train")
    crop = CATALOG["edged_fer"].crops[0]
    with np.load(shared_root() / "datasets" / "fer2013_train.npz") as d:
        data = {k: d[k][:N_IMAGES] for k in ("images", "labels", "ferplus_votes")}
        data["classes"] = d["classes"]
    data["crop"] = np.array(json.dumps(crop.to_json()))
    npz = root / "slice.npz"
    np.savez(npz, **data)
    _train(
        *("--data", str(npz), "--out", str(root / "run"), "--soft-targets"),
        *("--class-balance", "0.5", "--camera-aug", "--test-modes", "full,center"),
        *("--select-by", "mean_recall"),
    )
    side = json.loads((root / "run" / "edged_fer_v1.json").read_text())
    return {"root": root, "side": side, "images": data["images"], "crop": crop}


def test_sidecar_records_the_run_and_the_package_contract(trained: dict[str, Any]) -> None:
    side, spec = trained["side"], CATALOG["edged_fer"]
    assert side["labels"] == list(spec.labels)
    assert side["canonical_labels"] == list(spec.canonical_labels)
    assert side["mean"] == list(spec.mean) and side["std"] == list(spec.std)
    assert side["size"] == spec.input_size
    assert CropSpec.from_json(side["face_crop"]) == trained["crop"]
    assert side["effective_epochs"] == 1 and side["train_size"] + side["val_size"] == N_IMAGES
    assert side["test_time_mode"] in ("full", "center")
    assert side["train_config"]["select_by"] == "mean_recall"


def test_exported_graph_loads_through_the_daemons_loader(trained: dict[str, Any]) -> None:
    import onnxruntime as ort

    side, root = trained["side"], trained["root"]
    spec = dataclasses.replace(
        CATALOG["edged_fer"],
        name="trained_here",
        files=("run/edged_fer_v1.onnx",),
        labels=tuple(side["labels"]),
        mean=tuple(side["mean"]),
        std=tuple(side["std"]),
        crops=(CropSpec.from_json(side["face_crop"]),),
        shipped=False,
    )
    clf = load_classifier(spec, root, SessionFactory(providers=["cpu"]))
    crops = [cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) for im in trained["images"][:16]]
    probs = np.asarray(clf(crops))
    assert probs.shape == (16, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    # the same graph on the documented preprocessing, written out independently
    x = (np.stack(trained["images"][:16]).astype(np.float32)[:, None] / 255.0 - 0.5) / 0.5
    sess = ort.InferenceSession(str(root / spec.files[0]), providers=["CPUExecutionProvider"])
    z = sess.run(["logits"], {"input": x})[0].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    order = [clf.labels.index(c) for c in side["canonical_labels"]]
    np.testing.assert_allclose(probs[:, order], p / p.sum(1, keepdims=True), atol=1e-4)
    assert Path(root / "run" / "edged_fer_v1.pt").is_file()


def test_extra_photos_are_trained_on_never_validated_on_and_an_ensemble_teaches(
    trained: dict[str, Any],
) -> None:
    """``--extra-data`` joins the training side only (``--extra-repeat`` times), so the
    validation images stay FER2013's whatever a run learns from; ``--teacher A B`` distils
    the mean of several runs into one network; the sidecar's ``learnt_from`` names what
    each training file was cut from (so no evaluation scores it on those photos)."""
    root = trained["root"]
    crop = trained["crop"]
    n_extra = 20
    extra = root / "photos.npz"
    with np.load(shared_root() / "datasets" / "fer2013_train.npz") as d:
        classes = d["classes"]
    np.savez(
        extra,
        images=trained["images"][:n_extra][:, ::-1].copy(),
        labels=np.arange(n_extra) % 7,
        classes=classes,
        ferplus_votes=np.full((n_extra, 10), -1, np.int16),
        crop=np.array(json.dumps(crop.to_json())),
        source=np.array("facial_expressions:select-fit"),
    )
    teacher = str(root / "run" / "edged_fer_v1.pt")
    _train(
        *("--data", str(root / "slice.npz"), "--out", str(root / "kd"), "--soft-targets"),
        *("--extra-data", str(extra), "--extra-repeat", "3", "--teacher", teacher, teacher),
        *("--test-modes", "full"),
    )
    side = json.loads((root / "kd" / "edged_fer_v1.json").read_text())
    assert side["val_size"] == trained["side"]["val_size"]  # the same FER2013 images
    assert side["train_size"] == trained["side"]["train_size"] + 3 * n_extra
    assert [t["path"] for t in side["teacher"]] == [teacher, teacher]
    assert "photos.npz" in side["data_sha256"]
    assert side["learnt_from"] == {
        "slice.npz": "slice.npz",  # no ``source`` in the file: its own name
        "photos.npz": "facial_expressions:select-fit",
    }


def test_a_run_may_not_validate_on_images_its_start_or_teachers_learnt(
    trained: dict[str, Any],
) -> None:
    """The validation split has its own seed: a new ``--seed`` (batches, augmentation) keeps
    the held-out images, and a split other than the one the start model or a teacher was
    trained under on the same file is refused, naming the checkpoint and both splits (that
    split's validation would score what they memorised)."""
    root = trained["root"]
    teacher = str(root / "run" / "edged_fer_v1.pt")
    data = ("--data", str(root / "slice.npz"), "--test-modes", "full")
    for change in (("--split-seed", "7"), ("--val-fraction", "0.2")):
        with pytest.raises(SystemExit, match=r"--teacher .*edged_fer_v1\.pt .*seed 20261125"):
            _train(*data, "--out", str(root / "leak"), "--teacher", teacher, *change)
        with pytest.raises(SystemExit, match=r"--init-checkpoint .*give --split-seed 20261125"):
            _train(*data, "--out", str(root / "leak"), "--init-checkpoint", teacher, *change)
    _train(*data, "--out", str(root / "reseed"), "--teacher", teacher, "--seed", "7")
    side = json.loads((root / "reseed" / "edged_fer_v1.json").read_text())
    assert side["seed"] == 7 and side["train_config"]["split_seed"] == 20261125
    assert side["val_size"] == trained["side"]["val_size"]


def test_extra_data_framed_differently_from_the_training_data_is_refused(
    trained: dict[str, Any],
) -> None:
    from edged_train.data import Dataset, joined

    base = Dataset(trained["images"][:4], np.zeros(4, np.int64), {}, face_crop={"mode": "align"})
    other = Dataset(trained["images"][:2], np.zeros(2, np.int64), {"x.npz": "0"}, face_crop=None)
    with pytest.raises(SystemExit, match="framed"):
        joined(base, [other])


def test_a_widened_network_computes_the_same_logits_and_trains_on_from_them(
    trained: dict[str, Any],
) -> None:
    """``--widen-to`` starts a wider network from a trained one's function (Net2WiderNet):
    without noise its logits equal the original's; the run records the new widths."""
    from edged_train.model import load_trained, widen

    root = trained["root"]
    start = root / "run" / "edged_fer_v1.pt"
    net, ck = load_trained(start)
    wider = widen(net, (64, 128, 256, 320), noise=0.0).eval()
    x = torch.randn(8, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net(x), wider(x), atol=1e-4)
    assert [m.out_channels for m in wider.features if isinstance(m, torch.nn.Conv2d)][::2] == [
        64, 128, 256, 320,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="cannot widen"):
        widen(net, (32, 96, 192, 256))
    _train(
        *("--data", str(root / "slice.npz"), "--out", str(root / "wide"), "--test-modes", "full"),
        *("--init-checkpoint", str(start), "--widen-to", "64,128,256,320"),
    )
    _, ck_wide = load_trained(root / "wide" / "edged_fer_v1.pt")
    assert ck_wide["arch"]["widths"] == [64, 128, 256, 320]
    assert ck["arch"]["widths"] == [48, 96, 192, 256]
