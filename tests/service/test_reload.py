"""Reload as data: diff() of two settings says what is rebuilt, reconfigured or refused,
and the same field metadata decides what a remote config/set may change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edged.config import Change, Reload, Settings, build_settings, key_policy, settings_data
from edged.config import merge_config as merge
from edged.errors import ConfigError
from edged.service.reload import diff
from edged.service.remote import check_remote_change, remote_allowed


def _settings(tmp_path: Path, **change: Any) -> Settings:
    base = {"device": {"id": "dev", "state_dir": str(tmp_path)}, "mqtt": {"remote_config": True}}
    return build_settings(merge(base, change))


def _changed(old: Settings, change: dict[str, Any]) -> Settings:
    return build_settings(merge(settings_data(old), change))


def test_no_change_is_an_empty_plan(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    plan = diff(s, _changed(s, {}))
    assert plan.changed == () and not plan.rebuild and not plan.reconfigure


@pytest.mark.parametrize(
    ("change", "rebuild", "reconfigure"),
    [
        ({"pipeline": {"det_size": 320}}, {"pipeline"}, set()),
        ({"pipeline": {"phase": "lite"}}, {"pipeline"}, set()),
        ({"models": {"dir": "/elsewhere"}}, {"pipeline"}, set()),
        ({"pipeline": {"max_faces": 3}}, set(), {"pipeline"}),
        ({"smoothing": {"alpha": 0.9}}, set(), {"tracker"}),
        ({"mqtt": {"host": "broker.lan"}}, set(), {"publisher"}),
        ({"privacy": {"publish_boxes": False}}, set(), {"publisher", "tracker"}),
        ({"health": {"stale_after_s": 3}}, set(), {"health"}),
        ({"cameras": [{"id": "a", "source": "0"}]}, set(), {"cameras"}),
        # a rebuild subsumes an in-place change of the same component
        ({"pipeline": {"det_size": 320, "max_faces": 3}}, {"pipeline"}, set()),
    ],
)
def test_diff_sorts_each_changed_key_by_its_metadata(
    tmp_path: Path, change: dict[str, Any], rebuild: set[str], reconfigure: set[str]
) -> None:
    s = _settings(tmp_path)
    plan = diff(s, _changed(s, change))
    assert plan.rebuild == rebuild and plan.reconfigure == reconfigure
    assert plan.restart_only == ()
    plan.check_restart_only()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"device": {"id": "other"}}, "device.id"),
        ({"device": {"state_dir": "/elsewhere"}}, "device.state_dir"),
        ({"health": {"port": 1234}}, "health.port"),
        ({"health": {"host": "0.0.0.0"}}, "health.host"),
        ({"health": {"enabled": False}}, "health.enabled"),
    ],
)
def test_restart_only_keys_are_refused_naming_the_key(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    s = _settings(tmp_path)
    plan = diff(s, _changed(s, {**change, "smoothing": {"alpha": 0.9}}))
    assert plan.restart_only == (key,) and plan.reconfigure == {"tracker"}
    with pytest.raises(ConfigError, match=f"{key} cannot change while running; restart edged"):
        plan.check_restart_only()


def _remote_keys() -> set[str]:
    """Every key marked remote, read from the models' metadata."""
    keys = set()
    for name, field in Settings.model_fields.items():
        model = field.annotation
        fields = getattr(model, "model_fields", None)
        if fields is None:
            keys.update({name} if remote_allowed(name) else set())
            continue
        keys.update(f"{name}.{k}" for k in fields if remote_allowed(f"{name}.{k}"))
    return keys


def test_the_remote_allow_list_is_what_the_metadata_marks() -> None:
    remote = _remote_keys()
    assert {k.split(".")[0] for k in remote} == {
        "pipeline", "smoothing", "privacy", "mqtt", "health", "cameras",
    }  # fmt: skip
    assert {k for k in remote if k.startswith(("mqtt.", "health."))} == {
        "mqtt.heartbeat_s",
        "mqtt.homeassistant",
        "health.stale_after_s",
    }
    assert not any(k.startswith(("device.", "models.")) for k in remote)
    # the allow-list follows the marker, not a name list
    for key in remote:
        policy = key_policy(key)
        assert isinstance(policy, Reload) and policy.remote and policy.change is not Change.RESTART


@pytest.mark.parametrize(
    "key",
    ["mqtt.homeassistant_prefix", "mqtt.host", "health.max_connections", "models.mirror"],
)
def test_a_key_not_marked_remote_is_refused_by_config_set(tmp_path: Path, key: str) -> None:
    assert not remote_allowed(key)
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"config/set may not change {key}"):
        check_remote_change(_settings(tmp_path), json.dumps({section: {name: "x"}}).encode())


def test_a_path_below_a_scalar_or_a_whole_section_is_not_remote() -> None:
    assert key_policy("health.stale_after_s.port") is None
    assert key_policy("pipeline") is None
    assert key_policy("MQTT.host") is None
    assert not remote_allowed("cameras.source")
