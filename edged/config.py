"""The configuration tree: one pydantic model, validated once, passed down explicitly.

The file is TOML, looked up in the order of the contract (``--config``, ``$EDGED_CONFIG``,
``/etc/edged/edged.toml``, ``./config/edged.toml``). Environment variables override any key
(``EDGED_MQTT__HOST=broker.lan`` sets ``[mqtt] host``). Every section forbids unknown keys,
and a validation failure becomes a :class:`~edged.errors.ConfigError` whose message names
the file and each offending key, so an operator can fix it without reading a traceback.

Nothing here reads the environment or a file at import time: :func:`load_settings` does,
when it is called.
"""

from __future__ import annotations

import enum
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edged import sources
from edged.errors import ConfigError
from edged.sources import redact, redact_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on JetPack 6 (Python 3.10)
    import tomli as tomllib

#: Where the config file is looked for when neither ``--config`` nor ``$EDGED_CONFIG`` is set.
DEFAULT_CONFIG_PATHS: tuple[Path, ...] = (
    Path("/etc/edged/edged.toml"),
    Path("config/edged.toml"),
)

#: Ids end up in MQTT topics and Home Assistant unique ids: no wildcards, no slashes.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Provider = Literal["tensorrt", "cuda", "cpu"]
Phase = Literal["sota_phase3", "sota_phase2", "sota_phase1", "current", "lite"]


#: A config file larger than this is not a config file (``/dev/zero``, a video by mistake).
MAX_CONFIG_BYTES = 1024 * 1024
#: Tables and arrays nested deeper than this are refused before validation: no key of the
#: config is deeper than 3, and deeper input only costs stack (RecursionError) and time.
MAX_NESTING = 32


def _default_providers() -> list[Provider]:
    return ["tensorrt", "cuda", "cpu"]


class _EnvText(str):
    """A value that came from an ``EDGED_*`` environment variable.

    Environment variables are text by nature, so ``EDGED_MQTT__PORT=1884`` must still set
    an integer; in a file or a remote change a number must be a number, and a boolean a
    boolean (``port = true`` or ``remote_config = "yes"`` are refused). The mark lets the
    strict fields below convert text from the environment and nothing else.
    """


def _mark_env(value: Any) -> Any:
    if isinstance(value, str):
        return _EnvText(value)
    if isinstance(value, dict):
        return {k: _mark_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_env(v) for v in value]
    return value


def _from_env(convert: Any) -> Any:
    """A before-validator: environment text converted with ``convert``, the rest as is."""

    def validator(value: Any) -> Any:
        if not isinstance(value, _EnvText):
            return value
        try:
            return convert(value.strip())
        except (ValueError, ValidationError):
            return str(value)  # the strict check then reports the type error

    return validator


_LAX_BOOL: TypeAdapter[bool] = TypeAdapter(bool)

#: Strict scalars: no bool as int, no text as number, no "yes" as True, no inf/nan/1e300
#: (every float field also has an upper bound), except text from the environment.
StrictInt = Annotated[int, BeforeValidator(_from_env(int)), Field(strict=True)]
FiniteFloat = Annotated[
    float, BeforeValidator(_from_env(float)), Field(strict=True, allow_inf_nan=False)
]
StrictBool = Annotated[
    bool, BeforeValidator(_from_env(_LAX_BOOL.validate_python)), Field(strict=True)
]


Component = Literal["pipeline", "tracker", "publisher", "health", "cameras"]


class Change(enum.Enum):
    """How a running daemon takes a changed key."""

    #: The components' ``reconfigure`` (the publisher's ``update_settings``) applies it.
    IN_PLACE = "in_place"
    #: The components are built anew (and warmed) before anything switches over.
    REBUILD = "rebuild"
    #: Only a restart applies it: a reload that changes it is refused as a whole.
    RESTART = "restart"


@dataclass(frozen=True)
class Reload:
    """A key's reload policy, the one place that says how a change to it is applied and
    whether a remote ``config/set`` may make it at all.

    A section states its default as the class variable ``reload``; a field overrides it
    with this marker in its ``Annotated`` metadata. ``remote`` is an allow-list: a key is
    refused remotely unless someone marked it safe.
    """

    change: Change
    components: tuple[Component, ...] = ()
    remote: bool = False


#: Who the daemon is, where files are read or written, the health server's socket.
RESTART = Reload(Change.RESTART)


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignment is validated, and no
    string or path holds a NUL byte (no file name, topic or client id can carry one: the
    OS refuses such paths with a ValueError far from the config, and a broker drops such a
    client id on every connect)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: The policy of every key of the section without a :class:`Reload` marker of its own.
    reload: ClassVar[Reload] = RESTART

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, (str, Path)) and "\0" in str(text):
            raise ValueError("must not contain a NUL byte")
        if isinstance(value, _EnvText):
            return str(value)
        return value


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (it is used in MQTT topics)"
        )
    return value


def _default_device_id() -> str:
    host = socket.gethostname().split(".")[0] or "edged"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", host)
    return cleaned if _ID_RE.match(cleaned) else "edged"


_REMOTE_PUBLISHER = Reload(Change.IN_PLACE, ("publisher",), remote=True)
#: Which models load and how: a change rebuilds and re-warms them.
_MODELS = Reload(Change.REBUILD, ("pipeline",), remote=True)


class DeviceSettings(_Section):
    """Who this daemon is and where it keeps state (spool, fetched models, TensorRT cache)."""

    reload: ClassVar[Reload] = RESTART
    id: str = Field(default_factory=_default_device_id)
    state_dir: Path = Path("/var/lib/edged")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return _check_id(value, "device id")


class MqttSettings(_Section):
    """Broker connection, topics, and the guarded remote-configuration channel.

    The publisher rebuilds its client on any change; remotely only the heartbeat interval
    and discovery switch may change (never the broker, credentials, topics or the guard).
    """

    reload: ClassVar[Reload] = Reload(Change.IN_PLACE, ("publisher",))
    host: str = "127.0.0.1"
    port: StrictInt = Field(default=1883, ge=1, le=65535)
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    client_id: str = ""
    topic_prefix: str = "edged"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: StrictInt = Field(default=60, ge=5, le=65535)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: StrictBool = False
    heartbeat_s: Annotated[FiniteFloat, _REMOTE_PUBLISHER] = Field(default=30.0, ge=1, le=86400)
    homeassistant: Annotated[StrictBool, _REMOTE_PUBLISHER] = True
    #: Not remote: it would let a sender write retained messages into another topic tree.
    homeassistant_prefix: str = "homeassistant"
    remote_config: StrictBool = False
    remote_config_token: SecretStr = SecretStr("")
    #: A remote ``config/set`` may point cameras at files only under this directory.
    remote_media_dir: Path | None = None
    reconnect_min_s: FiniteFloat = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: FiniteFloat = Field(default=60.0, gt=0, le=3600)
    spool_max_events: StrictInt = Field(default=100_000, ge=1, le=1_000_000_000)
    spool_max_bytes: StrictInt = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)

    @field_validator(
        "password_file", "tls_ca", "tls_cert", "tls_key", "remote_media_dir", mode="before"
    )
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("topic_prefix", "homeassistant_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if (
            not value
            or any(c in value for c in "+#")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError(
                f"topic prefix {value!r} must be non-empty, without '+', '#' or a leading/"
                "trailing '/'"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def resolved_password(self) -> str:
        """The password from ``password`` or, when set, the first line of ``password_file``."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError, ValueError) as exc:  # ValueError: not UTF-8
                raise ConfigError(
                    f"mqtt.password_file: cannot read a password from {self.password_file}: {exc}"
                ) from exc
        return self.password.get_secret_value()

    def resolved_client_id(self, device_id: str) -> str:
        return self.client_id or f"edged-{device_id}"


class HealthSettings(_Section):
    """The HTTP health and metrics endpoint (its socket only changes with a restart)."""

    reload: ClassVar[Reload] = Reload(Change.IN_PLACE, ("health",))

    enabled: Annotated[StrictBool, RESTART] = True
    host: Annotated[str, RESTART] = "127.0.0.1"
    port: Annotated[StrictInt, RESTART] = Field(default=5003, ge=0, le=65535)
    #: A camera whose newest frame is older than this counts as not producing frames.
    stale_after_s: Annotated[FiniteFloat, Reload(Change.IN_PLACE, ("health",), remote=True)] = (
        Field(default=10.0, gt=0, le=86400)
    )
    #: Open connections at most; a new one beyond closes the one silent the longest, so a
    #: flood of idle connections can neither exhaust file descriptors nor lock out /health.
    max_connections: StrictInt = Field(default=64, ge=1, le=4096)
    #: A connection that sends nothing for this long is closed.
    idle_timeout_s: FiniteFloat = Field(default=10.0, gt=0, le=3600)
    #: A connection is closed this long after it was opened, whatever it does (bounds a
    #: request dribbled in byte by byte).
    request_timeout_s: FiniteFloat = Field(default=30.0, gt=0, le=3600)


class PipelineSettings(_Section):
    """Which models run, where, and the detection/crop knobs of the phase.

    Keys that decide which models load, and how, rebuild them; thresholds and batching are
    applied in place (:meth:`edged.pipeline.Pipeline.reconfigure`).
    """

    reload: ClassVar[Reload] = Reload(Change.IN_PLACE, ("pipeline",), remote=True)

    phase: Annotated[Phase, _MODELS] = "sota_phase2"
    detector: Annotated[str, _MODELS] = ""
    classifier: Annotated[str, _MODELS] = ""
    providers: Annotated[list[Provider], _MODELS] = Field(default_factory=_default_providers)
    tensorrt_fp16: Annotated[StrictBool, _MODELS] = True
    #: ONNX Runtime CPU threads per model session. 0 = edged's choice for the machine
    #: (:func:`edged.models.providers.default_threads`: 1 on 1-2 cores, else cores - 1 up
    #: to 4, measured in README "Threads"); inter-op threads are always 1, spinning off.
    intra_op_threads: Annotated[StrictInt, _MODELS] = Field(default=0, ge=0, le=256)
    det_size: Annotated[StrictInt, _MODELS] = Field(default=640, ge=128, le=2048)
    #: A frame smaller than det_size is enlarged at most this much (1 = never): enlarged
    #: close-up faces outgrow the detectors' anchors and are missed.
    det_max_upscale: Annotated[FiniteFloat, _MODELS] = Field(default=1.0, ge=1.0, le=8.0)
    #: 0 = the detector's own calibrated default (SCRFD 0.5, YuNet 0.6: YuNet scores run
    #: higher on non-faces, so one shared number would favour one family).
    det_threshold: FiniteFloat = Field(default=0.0, ge=0, lt=1)
    nms_threshold: FiniteFloat = Field(default=0.4, gt=0, le=1)
    min_face_px: StrictInt = Field(default=20, ge=0, le=16384)
    max_faces: StrictInt = Field(default=32, ge=1, le=1024)
    #: ``auto`` follows the phase (alignment for sota_phase2/3, box crop for phase1 and
    #: current, the model's own crop for lite). The framing (context, centre, border) is
    #: always the classifier's own, from the catalogue: see models/README.md.
    crop: Annotated[Literal["auto", "model", "box", "align"], _MODELS] = "auto"
    #: 0: the model's own framing. Otherwise the model's crop window grows by 1 + 2 x margin
    #: (negative shrinks it); for experiments, models are right framed their own way.
    crop_margin: FiniteFloat = Field(default=0.0, ge=-0.3, le=2)
    #: Faces classified in one batched call at most (larger sets are split).
    max_batch: StrictInt = Field(default=64, ge=1, le=1024)
    #: A tracked face whose emotion is settled is classified again only this often
    #: (seconds); between, its last probabilities stand and smoothing gets no new evidence.
    #: New faces, grown/moved boxes and unsettled emotions are classified every frame.
    #: 0 = every face on every frame. 0.5 chosen by tools/bench_video.py on the lite phase
    #: (scrfd_500m + edged_fer): 100 % event agreement with every-frame at 0.65
    #: classifications/frame instead of 1.74; 1.0 missed one event in eight (87.5 %).
    reclassify_interval_s: FiniteFloat = Field(default=0.5, ge=0, le=3600)
    #: A face is classified again when its box changed by more than this since its last
    #: classification, as 1 - IoU (0.3: grew ~1.4x or moved ~1/4 of its width). 0 = always.
    reclassify_box_change: FiniteFloat = Field(default=0.3, ge=0, le=1)
    #: Detect faces on every N-th frame of a camera and carry the boxes in between with a
    #: constant-velocity prediction (0 or 1 = every frame). A face missed by a detection
    #: still only leaves after ``[smoothing] track_timeout_s``; faces due for
    #: classification are classified on the carried frames too. 5 by measurement
    #: (tools/bench_video.py, lite phase, 10 fps: 5.1-5.5x the peer loop's frames/s with
    #: every event of the every-frame run; README). Lower it for fast-moving faces or low fps.
    detect_interval: StrictInt = Field(default=5, ge=0, le=300)

    @field_validator("providers")
    @classmethod
    def _providers_nonempty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('at least one provider is required (e.g. ["cpu"])')
        if len(set(value)) != len(value):
            raise ValueError("providers must not repeat")
        return value

    @field_validator("detector", "classifier")
    @classmethod
    def _known_model(cls, value: str, info: Any) -> str:
        if not value:
            return value
        from edged.models.catalog import CATALOG  # the catalogue imports nothing from config

        kind = "detector" if info.field_name == "detector" else "emotion"
        known = sorted(n for n, s in CATALOG.items() if s.kind == kind)
        if value not in known:
            raise ValueError(f"unknown {kind} model {value!r}; known: {', '.join(known)}")
        return value


class SmoothingSettings(_Section):
    """Per-track temporal smoothing and the hysteresis that keeps events honest."""

    reload: ClassVar[Reload] = Reload(Change.IN_PLACE, ("tracker",), remote=True)
    enabled: StrictBool = True
    method: Literal["ema", "window"] = "ema"
    alpha: FiniteFloat = Field(default=0.3, gt=0, le=1)
    window: StrictInt = Field(default=5, ge=1, le=300)
    min_dwell_s: FiniteFloat = Field(default=1.0, ge=0, le=3600)
    min_confidence: FiniteFloat = Field(default=0.4, ge=0, le=1)
    track_timeout_s: FiniteFloat = Field(default=2.0, gt=0, le=3600)
    iou_threshold: FiniteFloat = Field(default=0.3, gt=0, lt=1)


class ModelsSettings(_Section):
    """Where model files live and where they are fetched from (never remote: file paths)."""

    reload: ClassVar[Reload] = Reload(Change.REBUILD, ("pipeline",))
    dir: Path = Path("/var/lib/edged/models")
    mirror: str = ""


class PrivacySettings(_Section):
    """Data minimisation: what leaves the device about the people in front of a camera.

    The defaults publish what the contract's payloads have always carried; each key here
    can only take information away. A remote ``config/set`` may move them only towards less
    data (see :func:`edged.privacy.check_remote_privacy`); loosening takes the config file.
    """

    reload: ClassVar[Reload] = Reload(Change.IN_PLACE, ("publisher", "tracker"), remote=True)

    #: False: no ``bbox`` in events or retained attributes (where a person stood).
    publish_boxes: StrictBool = True
    #: False: events carry the emotion label and its confidence, not the whole distribution.
    publish_scores: StrictBool = True
    #: ``aggregate``: per camera, every ``aggregate_interval_s``, only how many faces there
    #: were and the distribution of their emotions; no per-person event, state or track id.
    mode: Literal["tracks", "aggregate"] = "tracks"
    aggregate_interval_s: FiniteFloat = Field(default=60.0, ge=1, le=86_400)
    #: Aggregate reports only from frames with at least this many faces (0: no minimum).
    min_faces: StrictInt = Field(default=0, ge=0, le=1024)
    #: Spooled messages older than this are dropped and counted (0: no age limit).
    spool_max_age_s: FiniteFloat = Field(default=0.0, ge=0, le=31_536_000)


class CameraSettings(_Section):
    """One camera: a device, URL, file or GStreamer pipeline, capped at ``fps``."""

    id: str
    source: str
    fps: FiniteFloat = Field(default=5.0, gt=0, le=240)
    loop: StrictBool = False
    #: For files: pace at the file's native rate (True) or read as fast as processed (False).
    realtime: StrictBool = True
    enabled: StrictBool = True
    width: StrictInt = Field(default=0, ge=0, le=16384)
    height: StrictInt = Field(default=0, ge=0, le=16384)
    reconnect_min_s: FiniteFloat = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: FiniteFloat = Field(default=30.0, gt=0, le=3600)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return _check_id(value, "camera id")

    @field_validator("source", mode="before")
    @classmethod
    def _source_str(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("source")
    @classmethod
    def _source_parses(cls, value: str) -> str:
        try:
            sources.parse(value)  # the parser capture uses: what passes here, capture opens
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value


class _MarkedEnvSource(PydanticBaseSettingsSource):
    """pydantic-settings' environment source, its values marked as :class:`_EnvText`."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = _mark_env(self._inner())
        return data


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="EDGED_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    device: DeviceSettings = Field(default_factory=DeviceSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    smoothing: SmoothingSettings = Field(default_factory=SmoothingSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    #: Changed cameras are restarted, the others keep running (sources checked remotely).
    cameras: Annotated[list[CameraSettings], Reload(Change.IN_PLACE, ("cameras",), remote=True)] = (
        Field(default_factory=list)
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the file, which arrives as init kwargs.
        return (_MarkedEnvSource(settings_cls, env_settings), init_settings)

    # A field validator (not a model validator) so the error is reported at key `cameras`.
    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraSettings]) -> list[CameraSettings]:
        seen: set[str] = set()
        for cam in cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return cameras

    def enabled_cameras(self) -> list[CameraSettings]:
        return [c for c in self.cameras if c.enabled]

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data with every secret replaced by ``"***"``.

        Secrets also hide inside URLs (``rtsp://user:pass@cam``, ``?pwd=`` on IP cameras, a
        token in the model mirror), so camera sources and the mirror go through the same
        redaction as the capture logs.
        """
        data = self.model_dump(mode="json")
        mqtt = data["mqtt"]
        for key in ("password", "remote_config_token"):
            mqtt[key] = "***" if mqtt.get(key) else ""
        data["models"]["mirror"] = redact(data["models"]["mirror"])
        for camera in data["cameras"]:
            camera["source"] = redact(camera["source"])
        return data


def find_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to use, by the contract's lookup order; ``None`` when there is none.

    An explicitly named file (``--config`` or ``$EDGED_CONFIG``) must exist; the default
    locations are optional.
    """
    named = explicit or (Path(environ["EDGED_CONFIG"]) if environ.get("EDGED_CONFIG") else None)
    if named is not None:
        if not named.is_file():
            raise ConfigError(f"config file {named} does not exist")
        return named
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return None


def check_nesting(data: Any, source: str, limit: int = MAX_NESTING) -> None:
    """Refuse tables/arrays nested deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > limit:
            raise ConfigError(f"{source}: nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; every way that fails is one ConfigError line naming the file.

    Not only syntax: a file that is not UTF-8, too large, nested thousands deep
    (RecursionError in the parser) or holding an integer of thousands of digits
    (ValueError) are reported the same way, never as a traceback.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL byte in the path
        raise ConfigError(f"{path!r}: cannot read: {exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: cannot read: larger than {MAX_CONFIG_BYTES // 1024} KiB, not a config file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: cannot read: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start})"
        ) from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from exc
    except ValueError as exc:  # an integer of more digits than Python converts
        why = "an integer of over 4300 digits" if "digits" in str(exc) else str(exc)
        raise ConfigError(f"{path}: invalid TOML: {why}") from exc
    check_nesting(data, str(path))
    return data


def _env_name(loc: tuple[Any, ...]) -> str | None:
    """The ``EDGED_SECTION__KEY`` variable that set this key, if one is set now."""
    if not loc or not all(isinstance(p, str) for p in loc):
        return None
    name = "EDGED_" + "__".join(str(p).upper() for p in loc)
    return name if any(k.upper() == name for k in os.environ) else None


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: section.key: message (got value)``.

    A key that came from an ``EDGED_*`` environment variable is blamed on that variable,
    not on the file, so the operator looks in the right place.
    """
    lines = []
    for err in exc.errors():
        env = _env_name(tuple(err["loc"]))
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or _holds_tables(got)
            else f" (got {_shown_input(got)})"
        )
        if "password" in loc or "token" in loc:
            shown = ""
        origin = f"environment {env}" if env else source
        # A message can quote a source (a camera URL with its password) too.
        lines.append(redact(f"{origin}: {loc}: {msg}{shown}"))
    return "\n".join(lines)


def _holds_tables(value: Any) -> bool:
    """A table, or a list of them (``cameras``): too long to echo, and full of sources."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value)


def _shown_input(value: Any, limit: int = 120) -> str:
    """The offending value as the error shows it: secrets in URLs hidden, length bounded."""
    text = repr(redact_value(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_settings(data: Mapping[str, Any], source: str = "<config>") -> Settings:
    """Validate plain data (file contents, possibly merged with a change) into Settings."""
    # pydantic-settings matches top-level names case-insensitively (for the environment);
    # in a file or a remote change ``[MQTT]`` is an unknown key, not an alias.
    unknown = [str(k) for k in data if k not in Settings.model_fields]
    if unknown:
        raise ConfigError("\n".join(f"{source}: {k}: unknown key" for k in unknown))
    check_nesting(data, source)
    try:
        return Settings(**dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
    except ValueError as exc:  # pydantic-settings: an EDGED_* variable that is not JSON
        raise ConfigError(redact(f"{source}: {exc}")) from exc


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path | None]:
    """Find, read and validate the configuration; returns it with the file it came from.

    ``environ`` is only used for the lookup of ``$EDGED_CONFIG``; key overrides come from the
    process environment through pydantic-settings.
    """
    env = os.environ if environ is None else environ
    found = find_config_file(path, env)
    data = read_toml(found) if found is not None else {}
    return build_settings(data, str(found) if found else "<defaults>"), found


def merge_config(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``change`` into ``base``: tables merge key by key, anything else replaces.

    ``cameras`` is a list and is replaced whole, so a remote change states the camera set it
    wants rather than patching positions.
    """
    out: dict[str, Any] = dict(base)
    for key, value in change.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def settings_data(settings: Settings) -> dict[str, Any]:
    """Settings as plain data (secrets included) that :func:`build_settings` accepts again."""
    data = settings.model_dump(mode="python")
    mqtt = data["mqtt"]
    mqtt["password"] = settings.mqtt.password.get_secret_value()
    mqtt["remote_config_token"] = settings.mqtt.remote_config_token.get_secret_value()
    return data


def iter_keys(data: Mapping[str, Any], prefix: str = "") -> Sequence[str]:
    """Dotted paths of every leaf key in a mapping (used to check what a change touches).

    An empty table is a leaf too: merged, ``{"models": {"dir": {}}}`` replaces the value
    at ``models.dir``, so the remote guard must see that key.
    """
    keys: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(iter_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _marker(field: FieldInfo) -> Reload | None:
    return next((m for m in field.metadata if isinstance(m, Reload)), None)


def key_policy(key: str) -> Reload | None:
    """The :class:`Reload` policy of a dotted key (``pipeline.det_size``, ``cameras``).

    ``None`` for a key that names no field a change may replace: an unknown section, a
    whole section, or a path below a scalar (``health.stale_after_s.port``). An unknown key
    inside a section gets the section's default, so the validation names it.
    """
    section, _, name = key.partition(".")
    top = Settings.model_fields.get(section)
    if top is None:
        return None
    model = top.annotation
    if not (isinstance(model, type) and issubclass(model, _Section)):
        return _marker(top) if not name else None
    if not name:
        return None
    field_name, _, below = name.partition(".")
    field = model.model_fields.get(field_name)
    if field is None:
        return model.reload
    if below:
        return None
    return _marker(field) or model.reload
