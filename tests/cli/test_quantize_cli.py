"""`edged models quantize NAME` through the real CLI: a real detector from ../shared,
calibrated on the real photos, loaded back through the catalogue as ``NAME_int8``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import PipelineSettings
from edged.models.catalog import CATALOG
from edged.models.loader import load_detector
from edged.models.providers import SessionFactory
from tests.cli.test_admin import _clean_env, cli, config  # noqa: F401  (fixtures)
from tests.conftest import make_models_dir

YUNET = CATALOG["yunet"].files[0]


def test_quantize_writes_an_int8_model_the_catalogue_loads_as_name_int8(
    shared: Path,
    images: Path,
    tmp_path: Path,
    config: Path,  # noqa: F811
) -> None:
    mdir = make_models_dir(shared, tmp_path / "models", only=[YUNET])
    res = cli("models", "quantize", "yunet", "--images", images, "--models-dir", mdir, "-c", config)
    assert res.exit_code == 0, res.output
    written = CATALOG["yunet_int8"].paths(mdir)[0]
    assert written.is_file() and written.name in res.stdout
    side = json.loads(written.with_suffix(".json").read_text())
    assert side["name"] == "yunet_int8" and side["calibration"] == "images/"
    assert not Path(side["calibration"]).is_absolute()

    settings = PipelineSettings()
    factory = SessionFactory(providers=["cpu"], intra_op_threads=1)
    fp32 = load_detector(CATALOG["yunet"], mdir, factory, settings)
    int8 = load_detector(CATALOG["yunet_int8"], mdir, factory, settings)
    img = cv2.imread(str(images / "selfie.jpg"))
    assert img is not None
    a, b = fp32(img), int8(img)
    assert len(a) >= 10
    matched = float((best_iou(a.boxes, b.boxes) >= 0.7).mean())
    assert matched >= 0.9, f"only {matched:.0%} of the fp32 faces found by int8"
    assert abs(len(b) - len(a)) <= 0.1 * len(a)


def best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each box of ``a`` (x1, y1, x2, y2), its best IoU with any box of ``b``."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.asarray((inter / union).max(axis=1))


def test_quantize_a_detector_without_images_fails_cleanly(
    shared: Path,
    tmp_path: Path,
    config: Path,  # noqa: F811
) -> None:
    mdir = make_models_dir(shared, tmp_path / "models", only=[YUNET])
    res = cli("models", "quantize", "yunet", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 1
    assert "--images" in res.output
    assert not CATALOG["yunet_int8"].paths(mdir)[0].exists()


def test_quantize_refuses_to_overwrite_the_shipped_int8_model(
    shared: Path,
    tmp_path: Path,
    config: Path,  # noqa: F811
) -> None:
    shipped = CATALOG["edged_fer_int8"].paths(tmp_path)[0]
    before = shipped.stat().st_mtime_ns
    res = cli(
        "models",
        "quantize",
        "edged_fer",
        "--data",
        shared / "datasets" / "fer2013_train.npz",
        "--models-dir",
        tmp_path,
        "-c",
        config,
    )
    assert res.exit_code == 1
    assert "--out" in res.output
    assert shipped.stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["nonexistent", "efficientvit_m5"])
def test_quantize_an_unknown_or_unquantizable_model_fails_cleanly(
    name: str,
    tmp_path: Path,
    config: Path,  # noqa: F811
) -> None:
    res = cli(
        "models", "quantize", name, "--images", tmp_path, "--models-dir", tmp_path, "-c", config
    )
    assert res.exit_code == 1
    assert "error:" in res.output
