"""Shared fixtures: the ../shared material (read in place, never copied) and a models
directory in the seed layout that links to the real detectors and stand-in classifiers.

Helpers that several test modules need live here; fixtures one module needs stay there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from edged.mqtt.publisher import Publisher
from tests.mqtt_helpers import MosquittoBroker

REPO = Path(__file__).resolve().parent.parent

# The fuzz tests bound their own example counts. On CI ($CI set) they are derandomized, so
# a run fails the same way every time and never on a new example found by chance; locally
# they explore freshly (and hypothesis replays what it once found from .hypothesis/).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def shared_root() -> Path:
    """``$EDGED_SHARED`` or ``<repo>/../shared``; a test that needs it fails when missing."""
    root = Path(os.environ.get("EDGED_SHARED", REPO.parent / "shared"))
    if not (root / "models").is_dir():
        pytest.fail(
            f"shared test material not found at {root}: set EDGED_SHARED or put shared/ "
            "beside the repository (CI always has it)",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_root()


@pytest.fixture(scope="session")
def images(shared: Path) -> Path:
    return shared / "images"


#: Seed-layout file → file in ../shared/models that plays it in tests.
LAYOUT_LINKS: dict[str, str] = {
    "scrfd/scrfd_2.5g_bnkps.onnx": "real/scrfd_2.5g_kps.onnx",
    "scrfd/scrfd_500m_bnkps.onnx": "real/scrfd_500m_kps.onnx",
    "yunet/face_detection_yunet_2023mar.onnx": "real/yunet_n_dynamic.onnx",
    "emotieff/fer_enet_b2_7.onnx": "standin/enet_b2_7.standin.onnx",
    "emotieff/fer_enet_b0_8.onnx": "standin/enet_b0_8_best_vgaf.standin.onnx",
    "affectnet_fer/affectnet_mobilenet_7.onnx": "standin/mobilenet_7.standin.onnx",
    "efficientvit/efficientvit_m5_backbone.onnx": "standin/efficientvit_m5_backbone.standin.onnx",
    "efficientvit/efficientvit_m5_emotion_head.onnx": (
        "standin/efficientvit_m5_emotion_head.standin.onnx"
    ),
}


def make_models_dir(shared: Path, dest: Path, only: list[str] | None = None) -> Path:
    """A models directory in the seed layout whose files are symlinks into ../shared."""
    for rel, src in LAYOUT_LINKS.items():
        if only is not None and rel not in only:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(shared / "models" / src)
    return dest


@pytest.fixture(scope="session")
def models_dir(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed layout with every model ../shared has (no scrfd_10g, no retinaface)."""
    return make_models_dir(shared, tmp_path_factory.mktemp("models"))


# --- MQTT: a real Mosquitto broker per test (helpers in tests/mqtt_helpers.py) ---------------


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A running mosquitto on a free 127.0.0.1 port (anonymous, no persistence).

    ``stop()``/``start()`` restart it on the same port (outage tests), ``kill()`` SIGKILLs
    it; it is always terminated at teardown. Fails, saying how to install it, when
    mosquitto is missing (`.ci/run` installs it).
    """
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    """Publishers a test starts (tests/mqtt, tests/service); stopped at teardown even
    when the test fails."""
    started: list[Publisher] = []
    yield started
    for pub in started:
        pub.stop(timeout=1.0)
