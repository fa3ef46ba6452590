"""Every bad config file is one clear error naming the file and the reason, never a
traceback; no error echoes a secret; strict, bounded types refuse what would validate and
then kill a thread later. Through the real CLI where the operator would see it.

The second half fuzzes the loader with hypothesis: arbitrary bytes, and TOML values of
every type at every key of the tree.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edged.cli.app import app
from edged.config import MAX_NESTING, Settings, build_settings, load_settings
from edged.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EDGED_"):
            monkeypatch.delenv(key)


def check_config(path: Path) -> Any:
    return CliRunner().invoke(app, ["check-config", "-c", str(path)])


def assert_one_clean_error(res: Any, path: Path, *words: str) -> str:
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert str(path) in lines[0] or repr(str(path))[1:-1] in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- item 4: files that could not be read or parsed ---------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'[mqtt]\nhost = "caf\xe9"\n', "not UTF-8"),
        (b"\xff\xfe[\x00m\x00q\x00t\x00t\x00]\x00", "not UTF-8"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"a = " + b"[" * (MAX_NESTING + 5) + b"]" * (MAX_NESTING + 5) + b"\n", "nested deeper"),
        (b"[mqtt]\nport = " + b"9" * 5000 + b"\n", "invalid TOML"),
        (b"x = 1\n" * 200_000, "not a config file"),
    ],
    ids=["latin1", "utf16", "nested-5000", "nested-37", "huge-int", "too-large"],
)
def test_an_unreadable_file_is_one_error_line_naming_file_and_reason(
    tmp_path: Path, body: bytes, why: str
) -> None:
    path = tmp_path / "edged.toml"
    path.write_bytes(body)
    assert_one_clean_error(check_config(path), path, why)


@pytest.mark.parametrize(
    "key",
    ["device.state_dir", "models.dir", "mqtt.password_file", "mqtt.tls_ca", "mqtt.client_id"],
)
def test_a_nul_byte_in_a_path_or_client_id_is_a_validation_error(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "edged.toml"
    path.write_text(f'[{section}]\n{name} = "/tmp/a\\u0000b"\n', encoding="utf-8")
    line = assert_one_clean_error(check_config(path), path, key, "NUL byte")
    assert "Traceback" not in line


def test_a_nul_byte_in_the_topic_prefix_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text('[mqtt]\ntopic_prefix = "edged\\u0000x"\n', encoding="utf-8")
    assert_one_clean_error(check_config(path), path, "mqtt.topic_prefix", "NUL byte")


def test_a_nul_byte_in_a_camera_source_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text('[[cameras]]\nid = "a"\nsource = "/dev/video0\\u0000"\n', encoding="utf-8")
    assert_one_clean_error(check_config(path), path, "cameras.0.source", "NUL byte")


def test_edged_run_on_a_file_that_is_not_utf8_exits_with_one_line(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "edged.toml"
    path.write_bytes(b'[device]\nid = "\xff"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    res = subprocess.run(
        [sys.executable, "-m", "edged", "run", "-c", str(path), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and f"{path}: cannot read: not UTF-8" in res.stderr


# --- item 3: no secret in a validation error ----------------------------------------------


def test_a_duplicate_camera_id_does_not_echo_the_camera_passwords(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(
        '[[cameras]]\nid = "door"\nsource = "rtsp://admin:hunter2-cam@10.0.0.5/h264"\n'
        '[[cameras]]\nid = "door"\nsource = "http://cam.lan/video.cgi?user=op&pwd=cgi-pw-5"\n',
        encoding="utf-8",
    )
    res = check_config(path)
    assert res.exit_code == 1
    assert "used twice" in res.output
    assert "hunter2-cam" not in res.output and "cgi-pw-5" not in res.output


def test_an_invalid_camera_field_does_not_echo_the_password_in_its_source(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(
        '[[cameras]]\nid = "a b"\nsource = "rtsp://admin:hunter2-cam@10.0.0.5/h264"\n'
        '[[cameras]]\nid = "c"\nsource = ["rtsp://admin:list-pw-9@10.0.0.6/h264"]\n',
        encoding="utf-8",
    )
    res = check_config(path)
    assert res.exit_code == 1 and "cameras.0.id" in res.output and "cameras.1.source" in res.output
    assert "hunter2-cam" not in res.output and "list-pw-9" not in res.output
    assert "rtsp://admin:***@10.0.0.6/h264" in res.output  # what was wrong stays readable


# --- item 7: strict and bounded -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = true\n", "mqtt.port"),
        ('[mqtt]\nport = "1883"\n', "mqtt.port"),
        ("[mqtt]\nport = 1883.0\n", "mqtt.port"),
        ('[mqtt]\nremote_config = "yes"\n', "mqtt.remote_config"),
        ("[mqtt]\nremote_config = 1\n", "mqtt.remote_config"),
        ("[mqtt]\nreconnect_max_s = inf\n", "mqtt.reconnect_max_s"),
        ("[mqtt]\nreconnect_max_s = 1e300\n", "mqtt.reconnect_max_s"),
        ("[mqtt]\nheartbeat_s = nan\n", "mqtt.heartbeat_s"),
        (
            '[[cameras]]\nid = "a"\nsource = "0"\nreconnect_max_s = inf\n',
            "cameras.0.reconnect_max_s",
        ),
        ('[[cameras]]\nid = "a"\nsource = "0"\nenabled = "false"\n', "cameras.0.enabled"),
        ("[smoothing]\ntrack_timeout_s = 1e308\n", "smoothing.track_timeout_s"),
        ("[health]\nport = false\n", "health.port"),
    ],
)
def test_loose_or_unbounded_values_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(text, encoding="utf-8")
    res = check_config(path)
    assert res.exit_code == 1, res.output
    assert f"{path}: {key}:" in res.output


def test_environment_overrides_still_convert_text_to_numbers_and_booleans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGED_MQTT__PORT", "1884")
    monkeypatch.setenv("EDGED_MQTT__REMOTE_CONFIG", "true")
    monkeypatch.setenv("EDGED_MQTT__RECONNECT_MAX_S", "5.5")
    monkeypatch.setenv("EDGED_MQTT__HOST", "broker.lan")
    path = tmp_path / "edged.toml"
    path.write_text("", encoding="utf-8")
    s, _ = load_settings(path)
    assert (s.mqtt.port, s.mqtt.remote_config, s.mqtt.reconnect_max_s) == (1884, True, 5.5)
    assert type(s.mqtt.host) is str and s.mqtt.host == "broker.lan"
    monkeypatch.setenv("EDGED_MQTT__RECONNECT_MAX_S", "inf")
    with pytest.raises(ConfigError, match="environment EDGED_MQTT__RECONNECT_MAX_S"):
        load_settings(path)


# --- fuzz: bytes and TOML values at every key ----------------------------------------------


def _leaf_keys() -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    for section, field in Settings.model_fields.items():
        if section == "cameras":
            continue
        model = field.annotation
        keys.extend((section, name) for name in model.model_fields)  # type: ignore[union-attr]
    cam_fields = Settings.model_fields["cameras"].annotation.__args__[0].model_fields  # type: ignore[union-attr]
    keys.extend(("cameras", name) for name in cam_fields)
    keys += [("device",), ("cameras",), ("bogus",), ("mqtt", "bogus")]
    return keys


_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
_scalars = st.one_of(
    _text,
    st.sampled_from(["", "0", "/dev/video0", "rtsp://u:pw@h/x ! appsink", "inf", "true"]),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    st.dates(),
    st.times(),
)
_toml_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


def _assign(key: tuple[str, ...], value: Any) -> dict[str, Any]:
    if key[0] == "cameras" and len(key) == 2:
        return {"cameras": [{"id": "a", "source": "0", key[1]: value}]}
    if len(key) == 1:
        return {key[0]: value}
    return {key[0]: {key[1]: value}}


@settings(max_examples=1000, deadline=None)
@given(key=st.sampled_from(_leaf_keys()), value=_toml_values)
def test_fuzz_any_toml_value_at_any_key_validates_or_is_a_config_error(
    key: tuple[str, ...], value: Any
) -> None:
    data = _assign(key, value)
    try:
        s = build_settings(data, "fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml: "), message
        assert "pw@" not in message  # a URL password never shows
        return
    # What validated is finite and typed: nothing that kills a thread later.
    for section in s.model_dump().values():
        rows = section if isinstance(section, list) else [section]
        for row in rows:
            for v in row.values():
                if isinstance(v, float):
                    assert math.isfinite(v)


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_fragments = st.sampled_from(
    [
        b"[mqtt]\n",
        b"[[cameras]]\n",
        b'id = "a"\n',
        b'source = "0"\n',
        b"port = 1883\n",
        b"port = true\n",
        b"x = [[[[[[]]]]]]\n",
        b"a = " + b"[" * 200,
        b"\xff",
        b"\x00",
        b'"',
        b"=",
        b"\n",
        b"1" * 5000,
        b"inf",
    ]
)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.one_of(st.binary(max_size=2048), st.lists(_fragments, max_size=12).map(b"".join)))
def test_fuzz_any_bytes_as_a_config_file_load_or_give_a_config_error(
    tmp_path: Path, body: bytes
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(body)
    try:
        load_settings(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), str(exc)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.sampled_from(_leaf_keys()), value=_text)
def test_fuzz_check_config_never_prints_a_traceback(
    tmp_path: Path, key: tuple[str, ...], value: str
) -> None:
    if key[0] == "cameras" and len(key) == 2:
        base = {"id": '"a"', "source": '"0"', key[1]: _toml_string(value)}
        body = "[[cameras]]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())
    elif len(key) == 1:
        body = f"{key[0]} = {_toml_string(value)}\n"
    else:
        body = f"[{key[0]}]\n{key[1]} = {_toml_string(value)}\n"
    tomllib.loads(body)  # the generator writes valid TOML; the config is what is fuzzed
    path = tmp_path / "edged.toml"
    path.write_text(body, encoding="utf-8")
    res = check_config(path)
    assert res.exit_code in (0, 1), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
