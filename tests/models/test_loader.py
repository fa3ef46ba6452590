"""The loader: every way a model file goes wrong in the field, and the phase fallback.

Model directories are built per test in the seed layout from symlinks into ../shared (real
detectors, stand-in classifiers); broken files are real broken files (a truncated copy, a
different model under the expected name), never mocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from structlog.testing import capture_logs

from edged.config import PipelineSettings
from edged.errors import ModelError, ModelMismatchError, ModelNotFoundError, NoUsableModelError
from edged.models.catalog import CATALOG
from edged.models.classification import CLASSIFIERS, EfficientViTClassifier
from edged.models.classification.base import Crops, FloatArray
from edged.models.detection import DETECTORS, YuNet
from edged.models.loader import load_classifier, load_detector, resolve, validate_session
from edged.models.providers import SessionFactory
from tests.conftest import make_models_dir
from tests.tiny_models import make_pooled_rgb_model

B2 = "emotieff/fer_enet_b2_7.onnx"
B0 = "emotieff/fer_enet_b0_8.onnx"
SCRFD25 = "scrfd/scrfd_2.5g_bnkps.onnx"
SCRFD05 = "scrfd/scrfd_500m_bnkps.onnx"
YUNET = "yunet/face_detection_yunet_2023mar.onnx"
EVIT_BACKBONE = "efficientvit/efficientvit_m5_backbone.onnx"
EVIT_HEAD = "efficientvit/efficientvit_m5_emotion_head.onnx"


@pytest.fixture(scope="module")
def factory() -> SessionFactory:
    return SessionFactory(providers=["cpu"])


def layout(shared: Path, dest: Path, *files: str) -> Path:
    return make_models_dir(shared, dest, only=list(files))


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_missing_file_names_full_path_and_fetch_command(
    tmp_path: Path, factory: SessionFactory
) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_classifier(CATALOG["enet_b2_7"], tmp_path, factory)
    msg = str(err.value)
    assert str(tmp_path / B2) in msg
    assert "edged models fetch enet_b2_7" in msg


def test_missing_file_without_download_source_names_import_command(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, EVIT_BACKBONE)  # head missing
    with pytest.raises(ModelNotFoundError) as err:
        load_classifier(CATALOG["efficientvit_m5"], models, factory)
    msg = str(err.value)
    assert str(models / EVIT_HEAD) in msg
    assert "edged models import FILE --as efficientvit_m5 --part 1" in msg


def test_truncated_file_is_a_model_error_naming_the_file(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    data = (shared / "models/standin/enet_b2_7.standin.onnx").read_bytes()
    target = tmp_path / B2
    target.parent.mkdir(parents=True)
    target.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError) as err:
        load_classifier(CATALOG["enet_b2_7"], tmp_path, factory)
    assert not isinstance(err.value, (ModelNotFoundError, ModelMismatchError))
    assert str(target) in str(err.value)


def test_other_model_under_the_expected_name_reports_expected_and_actual_shapes(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    target = tmp_path / B2
    target.parent.mkdir(parents=True)
    target.symlink_to(shared / "models/standin/enet_b0_8_best_vgaf.standin.onnx")
    with pytest.raises(ModelMismatchError) as err:
        load_classifier(CATALOG["enet_b2_7"], tmp_path, factory)
    msg = str(err.value)
    assert str(target) in msg
    assert "expected inputs [(?, 3, 260, 260)] and outputs [(?, 7)]" in msg
    assert "the file has inputs [(batch, 3, 224, 224)] and outputs [(batch, 8)]" in msg


def test_detector_file_with_wrong_outputs_is_a_mismatch(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    target = tmp_path / SCRFD25
    target.parent.mkdir(parents=True)
    target.symlink_to(shared / "models/real/yunet_s_640_640.onnx")  # 12 outputs, not 9
    with pytest.raises(ModelMismatchError) as err:
        load_detector(CATALOG["scrfd_2.5g"], tmp_path, factory, PipelineSettings())
    assert str(target) in str(err.value)


def test_dynamic_axes_in_the_file_satisfy_fixed_axes_of_the_spec(
    tmp_path: Path, factory: SessionFactory
) -> None:
    spec = CATALOG["enet_b0_8"]  # (None, 3, 224, 224) → (None, 8)
    fixed_one = make_pooled_rgb_model(tmp_path / "b1.onnx", 224, 8, batch=1)
    validate_session(spec, 0, fixed_one, factory.create(fixed_one)[0])
    wrong_size = make_pooled_rgb_model(tmp_path / "s200.onnx", 200, 8)
    with pytest.raises(ModelMismatchError, match=r"\(batch, 3, 200, 200\)"):
        validate_session(spec, 0, wrong_size, factory.create(wrong_size)[0])
    wrong_classes = make_pooled_rgb_model(tmp_path / "c7.onnx", 224, 7)
    with pytest.raises(ModelMismatchError, match=r"outputs \[\(batch, 7\)\]"):
        validate_session(spec, 0, wrong_classes, factory.create(wrong_classes)[0])


def test_phase3_without_efficientvit_falls_back_to_enet_b2_and_logs_the_file(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2)
    with capture_logs() as logs:
        loaded = resolve(PipelineSettings(), models, factory, phase="sota_phase3")
    assert loaded.models == {"detector": "scrfd_2.5g", "classifier": "enet_b2_7"}
    assert loaded.providers == {"scrfd_2.5g": "cpu", "enet_b2_7": "cpu"}
    assert loaded.crop == "align" and loaded.smoothing
    assert [fb.name for fb in loaded.fallbacks] == ["scrfd_10g", "efficientvit_m5"]
    warned = events(logs, "model_fallback")
    assert [w["model"] for w in warned] == ["scrfd_10g", "efficientvit_m5"]
    assert all(w["log_level"] == "warning" for w in warned)
    assert str(models / "scrfd/scrfd_10g_bnkps.onnx") in str(warned[0]["file"])
    assert str(models / EVIT_BACKBONE) in str(warned[1]["file"])
    assert str(models / EVIT_BACKBONE) in str(warned[1]["reason"])
    assert warned[1]["next"] == "enet_b2_7"


def test_phase3_resolves_to_the_efficientvit_m5_pair_when_both_files_are_present(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2, EVIT_BACKBONE, EVIT_HEAD)
    loaded = resolve(PipelineSettings(), models, factory, phase="sota_phase3")
    assert loaded.models == {"detector": "scrfd_2.5g", "classifier": "efficientvit_m5"}
    assert [fb.name for fb in loaded.fallbacks] == ["scrfd_10g"]
    assert loaded.crop == "align"
    clf = loaded.classifier
    assert clf is not None and clf.labels[:2] == ("angry", "contemptuous")
    probs = clf(np.zeros((2, clf.input_size, clf.input_size, 3), np.uint8))
    assert probs.shape == (2, 8)


def test_corrupt_second_file_of_a_two_file_model_falls_back(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2, EVIT_BACKBONE)
    (models / EVIT_HEAD).write_bytes(b"\x08\x07not an onnx file")
    with capture_logs() as logs:
        loaded = resolve(PipelineSettings(), models, factory, phase="sota_phase3")
    assert loaded.models["classifier"] == "enet_b2_7"
    (warned,) = [w for w in events(logs, "model_fallback") if w["model"] == "efficientvit_m5"]
    assert str(models / EVIT_HEAD) in str(warned["reason"])


def test_no_usable_detector_names_every_file_and_its_install_command(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, B2)
    with pytest.raises(NoUsableModelError) as err:
        resolve(PipelineSettings(), models, factory, phase="lite")
    msg = str(err.value)
    assert str(models / YUNET) in msg and str(models / SCRFD05) in msg
    assert "edged models fetch yunet" in msg and "edged models fetch scrfd_500m" in msg


def test_no_usable_classifier_names_the_file_and_fix(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25)
    with pytest.raises(NoUsableModelError) as err:
        resolve(PipelineSettings(), models, factory, phase="sota_phase1")
    msg = str(err.value)
    assert str(models / B2) in msg and "edged models fetch enet_b2_7" in msg


def test_explicit_classifier_is_strict_no_fallback(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2)
    with capture_logs() as logs, pytest.raises(ModelNotFoundError) as err:
        resolve(PipelineSettings(), models, factory, classifier="efficientvit_m5")
    assert str(models / EVIT_BACKBONE) in str(err.value)
    assert not [w for w in events(logs, "model_fallback") if w["kind"] == "emotion"]


def test_classifier_named_in_config_is_strict_too(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2)
    settings = PipelineSettings(classifier="mobilenet_7")
    with pytest.raises(ModelNotFoundError, match=r"affectnet_mobilenet_7\.onnx"):
        resolve(settings, models, factory)


def test_explicit_detector_is_strict_even_when_the_phase_chain_would_work(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    models = layout(shared, tmp_path, SCRFD25, B2)
    with pytest.raises(ModelNotFoundError, match="edged models fetch yunet"):
        resolve(PipelineSettings(), models, factory, detector="yunet")


def test_explicit_names_and_crop_override_are_used(
    shared: Path, models_dir: Path, factory: SessionFactory
) -> None:
    settings = PipelineSettings(crop="box")
    loaded = resolve(
        settings,
        models_dir,
        factory,
        phase="sota_phase2",
        detector="yunet",
        classifier="mobilenet_7",
    )
    assert loaded.models == {"detector": "yunet", "classifier": "mobilenet_7"}
    assert loaded.detector.name == "yunet" and loaded.classifier is not None
    assert loaded.classifier.labels == CATALOG["mobilenet_7"].canonical_labels
    assert loaded.crop == "box" and loaded.phase == "sota_phase2"
    assert loaded.fallbacks == []


def test_detection_only_builds_no_classifier(models_dir: Path, factory: SessionFactory) -> None:
    loaded = resolve(
        PipelineSettings(), models_dir, factory, detector="scrfd_500m", with_classifier=False
    )
    assert loaded.classifier is None
    assert loaded.models == {"detector": "scrfd_500m", "classifier": None}
    assert loaded.providers == {"scrfd_500m": "cpu"}


def test_unknown_or_wrong_kind_names_are_refused(models_dir: Path, factory: SessionFactory) -> None:
    with pytest.raises(ModelError, match="unknown emotion model 'yunet'"):
        resolve(PipelineSettings(), models_dir, factory, detector="yunet", classifier="yunet")
    with pytest.raises(ModelError, match="not an emotion model"):
        load_classifier(CATALOG["yunet"], models_dir, factory)


def make_out_of_bounds_head(path: Path) -> Path:
    """An EfficientViT head with the spec's I/O, [batch, 384] → [batch, 8], whose Gather
    reads column 400 of 384: it loads and validates, and fails only when it runs."""
    indices = np.array([0, 1, 2, 3, 4, 5, 6, 400], np.int64)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["features", "indices"], ["logits"], axis=1)],
        "out_of_bounds_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 384])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(indices, "indices")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- Our own bugs are not model faults -----------------------------------------------------
# Failure injection: a subclass with a deliberate bug, registered for one test.


class _YuNetWithABug(YuNet):
    def _setup(self, *args: Any) -> list[str]:
        raise AttributeError("'NoneType' object has no attribute 'names'")


class _EfficientViTWithABug(EfficientViTClassifier):
    def preprocess(self, crops: Crops) -> FloatArray:
        raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")


def test_a_bug_in_a_detector_class_propagates_instead_of_falling_back(
    models_dir: Path, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DETECTORS, "yunet", _YuNetWithABug)
    # The lite chain would otherwise quietly go on to scrfd_500m.
    with capture_logs() as logs, pytest.raises(AttributeError, match="no attribute 'names'"):
        resolve(PipelineSettings(), models_dir, factory, phase="lite", with_classifier=False)
    assert events(logs, "model_fallback") == []


def test_a_bug_in_a_classifier_class_propagates_instead_of_falling_back(
    models_dir: Path, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLASSIFIERS, "efficientvit", _EfficientViTWithABug)
    # The sota_phase3 chain would otherwise quietly go on to enet_b2_7.
    with capture_logs() as logs, pytest.raises(TypeError, match="unsupported operand"):
        resolve(PipelineSettings(), models_dir, factory, phase="sota_phase3")
    assert [e["kind"] for e in events(logs, "model_fallback")] == ["detector"]  # scrfd_10g


def test_a_classifier_file_that_fails_at_warm_up_is_a_model_error_and_falls_back(
    tmp_path: Path, shared: Path, factory: SessionFactory
) -> None:
    """A real ONNX Runtime failure (not a bug of ours) still becomes a clean ModelError."""
    models = layout(shared, tmp_path, SCRFD25, B2, EVIT_BACKBONE)
    # The head's declared I/O fits the spec, but its Gather reads past the end at run time.
    head = make_out_of_bounds_head(models / EVIT_HEAD)
    with pytest.raises(ModelError, match="warm-up inference failed") as err:
        load_classifier(CATALOG["efficientvit_m5"], models, factory)
    assert not isinstance(err.value, ModelMismatchError)
    with capture_logs() as logs:
        loaded = resolve(PipelineSettings(), models, factory, phase="sota_phase3")
    assert loaded.models["classifier"] == "enet_b2_7"
    (warned,) = [w for w in events(logs, "model_fallback") if w["model"] == "efficientvit_m5"]
    assert "warm-up inference failed" in warned["reason"] and str(head) in warned["file"]
