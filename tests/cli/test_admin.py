"""The operator commands (`edged models ...`, `edged cameras probe`) through the real CLI,
on real models from ../shared, real video files and file:// mirrors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edged.cli.app import app
from edged.models.catalog import CATALOG
from edged.models.fetch import LOCK_FILE
from tests.conftest import make_models_dir

YUNET = CATALOG["yunet"].files[0]
SCRFD500 = CATALOG["scrfd_500m"].files[0]
ENET_B2 = CATALOG["enet_b2_7"].files[0]
EVIT_BACKBONE, EVIT_HEAD = CATALOG["efficientvit_m5"].files
FER_SHIPPED = CATALOG["edged_fer"].paths(Path())[0]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EDGED_"):
            monkeypatch.delenv(key)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """An explicit, empty config: the tests never pick up /etc/edged or ./config."""
    path = tmp_path / "edged.toml"
    path.write_text('[device]\nid = "test"\n', encoding="utf-8")
    return path


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def list_json(models_dir: Path, config: Path) -> dict[str, Any]:
    res = cli("models", "list", "--json", "--models-dir", models_dir, "-c", config)
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in data["models"]}


# --------------------------------------------------------------------------- list


def test_list_json_shows_installed_models_and_usable_phases(
    shared: Path, tmp_path: Path, config: Path
) -> None:
    mdir = make_models_dir(shared, tmp_path / "m", only=[SCRFD500, ENET_B2])
    data = list_json(mdir, config)
    models = by_name(data)
    assert set(models) == set(CATALOG)
    assert models["scrfd_500m"]["installed"] and models["enet_b2_7"]["installed"]
    assert not models["scrfd_10g"]["installed"] and not models["yunet"]["installed"]
    assert models["scrfd_500m"]["phases"] == ["sota_phase3", "sota_phase2", "sota_phase1", "lite"]
    assert (
        models["scrfd_500m"]["size"] == (shared / "models/real/scrfd_500m_kps.onnx").stat().st_size
    )
    assert models["scrfd_500m"]["files"][0]["file"] == SCRFD500
    # Placed by hand (symlinks), so no reference hash yet.
    assert models["scrfd_500m"]["checksum"] == "unrecorded"
    phases = data["phases"]
    assert phases["sota_phase2"] == {
        "usable": True,
        "detector": "scrfd_500m",  # scrfd_10g and scrfd_2.5g missing: the chain falls back
        "classifier": "enet_b2_7",
        "detectors": ["scrfd_10g", "scrfd_2.5g", "scrfd_500m"],
        "classifiers": ["enet_b2_7"],
    }
    assert not phases["current"]["usable"]  # neither retinaface nor scrfd_10g
    assert set(data["usable_phases"]) >= {"sota_phase3", "sota_phase2", "sota_phase1"}
    assert "current" not in data["usable_phases"]
    assert ("lite" in data["usable_phases"]) == FER_SHIPPED.is_file()


def test_list_of_an_empty_directory_has_no_usable_phase_needing_downloads(
    tmp_path: Path, config: Path
) -> None:
    data = list_json(tmp_path / "empty", config)
    assert not any(m["installed"] for m in data["models"] if not m["shipped"])
    assert data["usable_phases"] == []


def test_list_table_names_models_paths_and_phases(models_dir: Path, config: Path) -> None:
    res = cli("models", "list", "--models-dir", models_dir, "-c", config)
    assert res.exit_code == 0, res.output
    for text in ("scrfd_10g", "no → fetch", "retinaface", "no → import", YUNET, "Phases"):
        assert text in res.output


# --------------------------------------------------------------------------- import


def test_import_places_checked_file_and_records_its_hash(
    shared: Path, tmp_path: Path, config: Path
) -> None:
    src = shared / "models/real/scrfd_500m_kps.onnx"
    mdir = tmp_path / "m"
    res = cli("models", "import", src, "--as", "scrfd_500m", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 0, res.output
    assert (mdir / SCRFD500).read_bytes() == src.read_bytes()
    assert "loaded and ran once on CPU" in res.output
    info = by_name(list_json(mdir, config))["scrfd_500m"]
    assert info["installed"] and info["checksum"] == "ok"
    assert [p.name for p in mdir.iterdir() if p.name.startswith(".import-")] == []


def test_a_fine_tuned_fer_model_imports_into_its_slot_and_analyze_uses_it(
    shared: Path, tmp_path: Path, config: Path
) -> None:
    # The shipped model stands in for a user's fine-tuned one: same contract.
    own = Path(__file__).resolve().parents[2] / "models/edged_fer/edged_fer_v2.onnx"
    mdir = make_models_dir(shared, tmp_path / "m", only=["yunet/face_detection_yunet_2023mar.onnx"])
    res = cli(
        "models", "import", own, "--as", "edged_fer_finetuned", "--models-dir", mdir, "-c", config
    )
    assert res.exit_code == 0, res.output
    assert (mdir / "ravdess_finetuned/edged_fer_finetuned.onnx").is_file()
    res = cli(
        "analyze", shared / "images/s_l.jpg", "--detector", "yunet",
        "--classifier", "edged_fer_finetuned", "--models-dir", mdir, "-c", config,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["models"]["classifier"] == "edged_fer_finetuned"
    assert len(out["faces"]) == 2 and all(f["emotion"] for f in out["faces"])


def test_import_of_a_mismatched_file_is_refused_and_places_nothing(
    shared: Path, tmp_path: Path, config: Path
) -> None:
    mdir = tmp_path / "m"
    wrong = shared / "models/standin/enet_b2_7.standin.onnx"  # an emotion model, not YuNet
    res = cli("models", "import", wrong, "--as", "yunet", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 1
    assert "does not match 'yunet'" in res.output and "expected" in res.output
    assert not (mdir / YUNET).exists()
    assert not (mdir / ".checksums.json").exists()
    assert [p for p in mdir.rglob("*") if p.is_file() and p.name != LOCK_FILE] == []


def test_import_of_a_non_onnx_file_is_refused(tmp_path: Path, config: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"this is not a model" * 100)
    mdir = tmp_path / "m"
    res = cli("models", "import", junk, "--as", "yunet", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 1 and "error:" in res.output
    assert not (mdir / YUNET).exists()


def test_import_two_file_model_part_by_part(shared: Path, tmp_path: Path, config: Path) -> None:
    mdir = tmp_path / "m"
    head = shared / "models/standin/efficientvit_m5_emotion_head.standin.onnx"
    backbone = shared / "models/standin/efficientvit_m5_backbone.standin.onnx"
    wrong_part = cli(
        "models", "import", head, "--as", "efficientvit_m5", "--part", "0",
        "--models-dir", mdir, "-c", config,
    )  # fmt: skip
    assert wrong_part.exit_code == 1 and not (mdir / EVIT_BACKBONE).exists()
    first = cli(
        "models", "import", head, "--as", "efficientvit_m5", "--part", "1",
        "--models-dir", mdir, "-c", config,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "the full load check runs once the other part" in first.output
    second = cli(
        "models", "import", backbone, "--as", "efficientvit_m5", "--part", "0",
        "--models-dir", mdir, "-c", config,
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "loaded and ran once on CPU" in second.output
    assert by_name(list_json(mdir, config))["efficientvit_m5"]["checksum"] == "ok"


def test_import_rejects_unknown_names_and_parts(shared: Path, tmp_path: Path, config: Path) -> None:
    src = shared / "models/real/yunet_n_dynamic.onnx"
    res = cli("models", "import", src, "--as", "yolo", "--models-dir", tmp_path, "-c", config)
    assert res.exit_code == 1 and "unknown model 'yolo'" in res.output
    res = cli(
        "models", "import", src, "--as", "yunet", "--part", "1", "--models-dir", tmp_path,
        "-c", config,
    )  # fmt: skip
    assert res.exit_code == 1 and "--part must be 0" in res.output


# --------------------------------------------------------------------------- verify


def test_verify_passes_for_good_models(shared: Path, tmp_path: Path, config: Path) -> None:
    mdir = make_models_dir(shared, tmp_path / "m", only=[YUNET, ENET_B2])
    res = cli("models", "verify", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if ln.startswith("│")]
    # The shipped model is always installed, so verify checks it too.
    assert {r.split("│")[1].strip() for r in rows} == {
        "yunet",
        "enet_b2_7",
        "edged_fer",
        "edged_fer_fast",
        "edged_fer_int8",
        "edged_fer_v7",
        "edged_fer_v6",
        "edged_fer_v5",
        "edged_fer_v4",
        "edged_fer_v3",
        "edged_fer_v2",
        "edged_fer_v2_fast",
    }
    assert all("cpu" in r and " ok " in r for r in rows)


def test_verify_reports_a_corrupted_file(shared: Path, tmp_path: Path, config: Path) -> None:
    mdir = tmp_path / "m"
    src = shared / "models/real/yunet_n_dynamic.onnx"
    assert (
        cli("models", "import", src, "--as", "yunet", "--models-dir", mdir, "-c", config).exit_code
        == 0
    )
    target = mdir / YUNET
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: it still loads
    target.write_bytes(bytes(data))
    res = cli("models", "verify", "yunet", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 1
    assert "MISMATCH" in res.output and "FAIL" in res.output
    assert by_name(list_json(mdir, config))["yunet"]["checksum"] == "mismatch"


def test_verify_reports_a_truncated_file_placed_by_hand(
    shared: Path, tmp_path: Path, config: Path
) -> None:
    mdir = tmp_path / "m"
    target = mdir / ENET_B2
    target.parent.mkdir(parents=True)
    src = (shared / "models/standin/enet_b2_7.standin.onnx").read_bytes()
    target.write_bytes(src[: len(src) // 3])
    res = cli("models", "verify", "--models-dir", mdir, "-c", config)
    assert res.exit_code == 1
    assert "FAILED" in res.output and "enet_b2_7" in res.output


def test_verify_of_a_named_model_that_is_missing_fails(tmp_path: Path, config: Path) -> None:
    res = cli("models", "verify", "scrfd_10g", "--models-dir", tmp_path, "-c", config)
    assert res.exit_code == 1 and "not installed" in res.output


# --------------------------------------------------------------------------- fetch


def test_fetch_phase_from_a_mirror_falls_back_along_the_chain(
    models_dir: Path, tmp_path: Path, config: Path
) -> None:
    # The mirror (a file:// copy of the layout) has no scrfd_10g: the phase still becomes
    # usable with the next detector of its chain, and the miss is reported as a warning.
    mdir = tmp_path / "m"
    res = cli(
        "models", "fetch", "--phase", "sota_phase2", "--mirror", models_dir.as_uri(),
        "--models-dir", mdir, "-c", config,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "scrfd_10g" in res.output  # the warning about the missing primary model
    data = list_json(mdir, config)
    assert data["phases"]["sota_phase2"]["detector"] == "scrfd_2.5g"
    assert data["phases"]["sota_phase2"]["classifier"] == "enet_b2_7"
    assert (mdir / ENET_B2).read_bytes() == (models_dir / ENET_B2).read_bytes()
    assert by_name(data)["enet_b2_7"]["checksum"] == "ok"  # hash recorded at download


def test_fetch_uses_mirror_from_environment(
    models_dir: Path, tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGED_MODEL_MIRROR", models_dir.as_uri())
    res = cli("models", "fetch", "yunet", "--models-dir", tmp_path / "m", "-c", config)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / YUNET).is_file()


def test_fetch_uses_mirror_from_config(models_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[models]\ndir = "{tmp_path / "m"}"\nmirror = "{models_dir.as_uri()}"\n')
    res = cli("models", "fetch", "yunet", "-c", cfg)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / YUNET).is_file()


def test_fetch_of_model_without_download_names_the_import_command(
    tmp_path: Path, config: Path
) -> None:
    res = cli("models", "fetch", "retinaface", "--models-dir", tmp_path, "-c", config)
    assert res.exit_code == 1
    assert "edged models import FILE --as retinaface" in res.output


def test_fetch_phase_with_nothing_installable_fails(tmp_path: Path, config: Path) -> None:
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    res = cli(
        "models", "fetch", "--phase", "sota_phase1", "--mirror", empty_mirror.as_uri(),
        "--models-dir", tmp_path / "m", "-c", config, "--timeout", "2",
    )  # fmt: skip
    assert res.exit_code == 1
    assert "no model of the chain scrfd_10g → scrfd_2.5g → scrfd_500m is installed" in res.output


# --------------------------------------------------------------------------- cameras


def write_video(path: Path, size: tuple[int, int] = (320, 240), frames: int = 12) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), i * 15, np.uint8))
    writer.release()
    return path


def test_cameras_probe_reports_a_video_file(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[cameras]]\nid = "clip"\nsource = "{video}"\n')
    res = cli("cameras", "probe", "--no-devices", "-c", cfg)
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if "clip" in ln and "│" in ln)
    assert "yes" in row and "320x240" in row and " ms " in row


def test_cameras_probe_fails_on_a_missing_device(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[[cameras]]\nid = "clip"\nsource = "{video}"\n'
        '[[cameras]]\nid = "door"\nsource = "/dev/video97"\n'
    )
    res = cli("cameras", "probe", "--no-devices", "--timeout", "3", "-c", cfg)
    assert res.exit_code == 1
    row = next(ln for ln in res.output.splitlines() if "door" in ln and "│" in ln)
    assert "/dev/video97" in row and "no" in row and "no such device" in row


def test_cameras_probe_ignores_failures_of_disabled_cameras(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nid = "door"\nsource = "/dev/video97"\nenabled = false\n')
    res = cli("cameras", "probe", "--no-devices", "--timeout", "3", "-c", cfg)
    assert res.exit_code == 0
    assert "door (disabled)" in res.output


def test_cameras_probe_hides_rtsp_password(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nid = "cam"\nsource = "rtsp://u:pa55w0rd@127.0.0.1:9/x"\n')
    res = cli("cameras", "probe", "--no-devices", "--timeout", "3", "-c", cfg)
    assert res.exit_code == 1
    assert "pa55w0rd" not in res.output and "rtsp://u:***@127.0.0.1:9/x" in res.output


# --------------------------------------------------------------------------- install


def test_install_script_is_valid_bash_and_dry_run_plans_the_service() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "tools/install.sh"
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(script)], check=True)
    out = subprocess.run(
        [bash, str(script), "--dry-run", "--cpu"], check=True, capture_output=True, text=True
    ).stdout
    for step in (
        "python3 -m venv /opt/edged/venv",
        "install -m 0644 ",
        "/etc/systemd/system/edged.service",
        "systemctl daemon-reload",
        "systemctl enable edged.service",
        "/var/lib/edged/models",
    ):
        assert step in out, step
    assert "onnxruntime-gpu" not in out


def test_systemd_unit_verifies_and_keeps_contract_settings(tmp_path: Path) -> None:
    import subprocess

    unit = (Path(__file__).resolve().parents[2] / "systemd/edged.service").read_text()
    for line in (
        "Type=notify",
        "ExecStart=/opt/edged/venv/bin/edged run --config /etc/edged/edged.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=60",
        "User=edged",
        "StateDirectory=edged",
        "DeviceAllow=char-video4linux rw",
        "ProtectSystem=strict",
    ):
        assert line in unit.splitlines(), line
    assert "PrivateDevices=true" not in unit.splitlines()  # would hide cameras and GPU
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at a binary this machine has.
    copy = tmp_path / "edged.service"
    copy.write_text(unit.replace("/opt/edged/venv/bin/edged", "/bin/true"))
    res = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
