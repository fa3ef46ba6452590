"""The guard of ``config/set``: a bounded JSON reader, the token, and the key allow-list.

Remote configuration is a way in (CONTRACT.md): a change is refused unless ``[mqtt]
remote_config`` is on, it carries the configured token, and every key it touches is marked
``remote`` in the config models' reload metadata (:func:`edged.config.key_policy`): an
allow-list, so a key added later is refused until someone marks it safe. Camera sources it
names go through :func:`edged.sources.check_remote`; privacy keys may only move towards less
data (:func:`edged.privacy.check_remote_privacy`, applied by the daemon after merging).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any

from edged import sources
from edged.config import MAX_NESTING, Settings, iter_keys, key_policy
from edged.errors import ConfigError

#: A ``config/set`` payload larger than this is refused unread (a full config is ~5 KB).
MAX_CONFIG_SET_BYTES = 64 * 1024


def remote_allowed(key: str) -> bool:
    """Whether a remote change may replace the dotted ``key`` (its policy says ``remote``)."""
    policy = key_policy(key)
    return policy is not None and policy.remote


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _json_nesting(text: str, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit``, before the (recursive) parser sees it."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise ConfigError(f"config/set payload is nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_config_set(
    payload: bytes, max_bytes: int = MAX_CONFIG_SET_BYTES, max_depth: int = MAX_NESTING
) -> dict[str, Any]:
    """The one reader of ``config/set`` payloads: a JSON object, or a ConfigError why not.

    Bounded before parsing (size, then nesting: Python's parser recurses and a payload
    nested thousands deep raised RecursionError on the loop), strict while parsing (no
    NaN/Infinity, no integer of thousands of digits), and after it (no string with a lone
    surrogate escape, which no answer or log line could encode).
    """
    if len(payload) > max_bytes:
        raise ConfigError(f"config/set payload is {len(payload)} bytes; at most {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config/set payload is not UTF-8 (offset {exc.start})") from exc
    _json_nesting(text, max_depth)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:  # not reachable below the nesting limit; kept as a guard
        raise ConfigError("config/set payload is nested too deeply") from exc
    except ValueError as exc:
        raise ConfigError(f"config/set payload is not JSON: {exc}") from exc
    stack = [value]
    while stack:
        item = stack.pop()
        texts: list[Any] = [item]
        if isinstance(item, dict):
            texts = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for t in texts:
            if isinstance(t, str):
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ConfigError(
                        "config/set payload holds a lone surrogate escape (\\ud800-\\udfff)"
                    ) from exc
    if not isinstance(value, dict):
        raise ConfigError("config/set payload must be a JSON object")
    return value


def check_remote_change(settings: Settings, payload: bytes) -> dict[str, Any]:
    """The guard of the contract: enabled, token, only allowed keys, only safe sources.

    Returns the change without its token, ready to merge into the running config.
    """
    mqtt = settings.mqtt
    if not mqtt.remote_config:
        raise ConfigError("remote configuration is disabled ([mqtt] remote_config = false)")
    change = load_config_set(payload)
    _check_token(mqtt.remote_config_token.get_secret_value(), change.pop("token", None))
    change.pop("id", None)  # the request id, echoed in config/result, is not a setting
    for key in iter_keys(change):
        if not remote_allowed(key):
            raise ConfigError(f"config/set may not change {key}")
    _check_sources(settings, change.get("cameras"))
    return change


def _check_token(token: str, given: object) -> None:
    # Compared as UTF-8 bytes: compare_digest refuses non-ASCII str, and a configured
    # token from the environment may even hold surrogate escapes.
    if token and not (isinstance(given, str) and hmac.compare_digest(_utf8(given), _utf8(token))):
        raise ConfigError("config/set refused: missing or wrong token")


def _check_sources(settings: Settings, cameras: object) -> None:
    if cameras is None:
        return
    if not isinstance(cameras, list):
        raise ConfigError("config/set: cameras must be a list of camera tables")
    # A source the running config already reads is not a new way in.
    current = {c.source for c in settings.cameras}
    for cam in cameras:
        source = cam.get("source") if isinstance(cam, Mapping) else None
        if isinstance(source, bool) or not isinstance(source, (str, int)):
            continue  # not a source at all: the validation refuses it
        if str(source) not in current:
            sources.check_remote(str(source), settings.mqtt.remote_media_dir)


__all__ = ["MAX_CONFIG_SET_BYTES", "check_remote_change", "load_config_set", "remote_allowed"]
