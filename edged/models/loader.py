"""Building models from the catalogue: validate every file, then fall back along the phase.

Each file is checked against its :class:`~edged.models.catalog.ModelSpec` before anything is
built from it, because the failures an operator meets in the field are files that are
missing, cut short by an interrupted copy, or a different model under the expected name;
each gets its own error naming the file and what to do:

* missing → :class:`ModelNotFoundError` with the full path and the command that installs it
  (``edged models fetch NAME``, or ``edged models import FILE --as NAME`` for models with no
  download source);
* truncated/corrupt → :class:`ModelError` naming the file (the session factory wraps ONNX
  Runtime's parse error);
* other inputs/outputs than the spec → :class:`ModelMismatchError` with expected vs. actual.

Shape rule: ``None`` in the spec is a dynamic axis and accepts anything. A fixed size in the
spec accepts the same size or a *dynamic* axis in the file: a dynamic axis runs at the size
we feed it (SCRFD and YuNet exist as dynamic-input exports), so rejecting it would refuse
working models. A different fixed size is a mismatch.

:func:`resolve` walks the phase's chains (``PHASES[phase].detectors`` / ``.classifiers``):
each failure is logged as ``model_fallback`` with the file and reason and the next model is
tried. A model named explicitly (config ``[pipeline] detector``/``classifier`` or the CLI)
is used strictly: the operator asked for that model, so its error is raised as is rather
than silently replaced. With nothing usable, :class:`NoUsableModelError` lists every file
tried, its reason and the command that installs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnxruntime as ort
import structlog

from edged.config import PipelineSettings, Settings
from edged.errors import (
    EdgedError,
    ModelError,
    ModelMismatchError,
    ModelNotFoundError,
    NoUsableModelError,
)
from edged.models.catalog import CATALOG, PHASES, ModelSpec, PhaseCrop
from edged.models.classification import CLASSIFIERS, Classifier
from edged.models.detection import DETECTORS, Detector
from edged.models.detection.common import ort_errors
from edged.models.providers import SessionFactory

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How errors name each kind of model: (what it is, what implements it).
_KIND_WORDS = {
    "detector": ("a face detector", "detector"),
    "emotion": ("an emotion model", "classifier"),
}


@dataclass(frozen=True)
class Fallback:
    """One model of a chain that could not be used, and why."""

    kind: str
    name: str
    reason: str
    fix: str


@dataclass
class LoadedModels:
    """What :func:`resolve` built: the models, how faces are cropped, what was skipped."""

    detector: Detector
    classifier: Classifier | None
    #: The crop mode asked for (``model``: the classifier's own); the framing itself is the
    #: classifier's :class:`~edged.models.catalog.CropSpec` of that mode.
    crop: PhaseCrop
    smoothing: bool
    phase: str
    #: ``{"detector": name, "classifier": name or None}``
    models: dict[str, str | None]
    #: model name → execution provider actually used (``cpu``, ``cuda``, ``tensorrt``)
    providers: dict[str, str]
    fallbacks: list[Fallback] = field(default_factory=list)
    #: model name → its ONNX Runtime sessions (file order), for benchmarks and diagnostics
    sessions: dict[str, list[ort.InferenceSession]] = field(default_factory=dict)


def session_factory(settings: Settings, providers: Sequence[str] | None = None) -> SessionFactory:
    """The session factory the config asks for (providers overridable, e.g. from the CLI)."""
    pipe = settings.pipeline
    return SessionFactory(
        providers=list(providers) if providers else list(pipe.providers),
        trt_cache_dir=settings.device.state_dir / "tensorrt",
        trt_fp16=pipe.tensorrt_fp16,
        intra_op_threads=pipe.intra_op_threads,
    )


def install_hint(spec: ModelSpec, part: int | None = None) -> str:
    """The command that puts a model's file(s) in place."""
    if spec.shipped:
        return (
            f"it ships with edged: reinstall edged, or train it with tools/train_emotion.py "
            f"and copy the file to {spec.paths(Path())[part or 0]}"
        )
    if spec.sources:
        return f"edged models fetch {spec.name}"
    part_opt = f" --part {part}" if part is not None and len(spec.files) > 1 else ""
    return f"edged models import FILE --as {spec.name}{part_opt}"


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _fmt_shapes(shapes: Sequence[Sequence[Any]]) -> str:
    return "[" + ", ".join(_fmt_shape(s) for s in shapes) + "]"


def _dim_ok(expected: int | None, actual: Any) -> bool:
    if expected is None:
        return True
    # ORT reports a symbolic axis as a string ("batch") or None: dynamic, runs at our size.
    if actual is None or isinstance(actual, str):
        return True
    return int(actual) == expected


def _shapes_ok(expected: Sequence[Sequence[int | None]], actual: Sequence[Sequence[Any]]) -> bool:
    if len(expected) != len(actual):
        return False
    for exp, act in zip(expected, actual, strict=True):
        if len(exp) != len(act):
            return False
        if not all(_dim_ok(e, a) for e, a in zip(exp, act, strict=True)):
            return False
    return True


def validate_session(
    spec: ModelSpec, index: int, path: Path, session: ort.InferenceSession
) -> None:
    """Raise ModelMismatchError when the file's I/O differs from ``spec`` (file ``index``)."""
    ins = [list(i.shape) for i in session.get_inputs()]
    outs = [list(o.shape) for o in session.get_outputs()]
    exp_in = spec.inputs[index] if index < len(spec.inputs) else None
    exp_out = spec.outputs[index] if index < len(spec.outputs) else None
    ok = (exp_in is None or _shapes_ok(exp_in, ins)) and (
        exp_out is None or _shapes_ok(exp_out, outs)
    )
    if ok:
        return
    expected = []
    if exp_in is not None:
        expected.append(f"inputs {_fmt_shapes(exp_in)}")
    if exp_out is not None:
        expected.append(f"outputs {_fmt_shapes(exp_out)}")
    raise ModelMismatchError(
        f"model file {path} does not match '{spec.name}' ({spec.description}): expected "
        f"{' and '.join(expected)}, the file has inputs {_fmt_shapes(ins)} and outputs "
        f"{_fmt_shapes(outs)}; replace it with the right file "
        f"({install_hint(spec, index)})"
    )


def open_sessions(
    spec: ModelSpec, models_dir: Path, factory: SessionFactory
) -> tuple[list[ort.InferenceSession], str]:
    """Check that every file exists, load it, validate it; the sessions and the provider.

    With several files the provider reported is the first file's (they share the factory's
    preference, so they normally agree; a disagreement is logged).
    """
    paths = spec.paths(models_dir)
    for i, path in enumerate(paths):
        if not path.is_file():
            raise ModelNotFoundError(
                f"model file {path} for '{spec.name}' is not installed; install it with: "
                f"{install_hint(spec, i)}"
            )
    sessions: list[ort.InferenceSession] = []
    providers: list[str] = []
    for i, path in enumerate(paths):
        session, provider = factory.create(path, spec.kind)
        validate_session(spec, i, path, session)
        sessions.append(session)
        providers.append(provider)
    if len(set(providers)) > 1:
        log.warning("model_provider_mixed", model=spec.name, providers=providers)
    return sessions, providers[0]


def load_detector(
    spec: ModelSpec,
    models_dir: Path,
    factory: SessionFactory,
    pipeline_settings: PipelineSettings,
    *,
    sessions_out: dict[str, list[ort.InferenceSession]] | None = None,
) -> Detector:
    """A ready detector for ``spec`` with the config's detection settings.

    ``sessions_out`` receives the ONNX Runtime session(s) under the model name (the
    benchmark times ``session.run`` on exactly the session the pipeline uses).
    """
    cls = _implementation(spec, "detector", DETECTORS)
    sessions, provider = open_sessions(spec, models_dir, factory)
    path = spec.paths(models_dir)[0]
    try:
        session = cls.prepare_session(spec, sessions[0], path)
        if sessions_out is not None:
            sessions_out[spec.name] = [session]  # the one that runs, rebuilt or not
        detector: Detector = cls(
            spec,
            session,
            provider,
            det_size=pipeline_settings.det_size,
            max_upscale=pipeline_settings.det_max_upscale,
            threshold=pipeline_settings.det_threshold or spec.default_threshold,
            nms_threshold=pipeline_settings.nms_threshold,
            min_face_px=pipeline_settings.min_face_px,
            max_faces=pipeline_settings.max_faces,
        )
    except ort_errors() as exc:
        # Detectors wrap their own session runs; this catches what ONNX Runtime raises
        # while they read the session. A TypeError or AttributeError is edged's bug and
        # propagates: it must not pass for a broken model file and a quiet fallback.
        raise ModelError(f"cannot build detector '{spec.name}' from {path}: {exc}") from exc
    return detector


def load_classifier(
    spec: ModelSpec,
    models_dir: Path,
    factory: SessionFactory,
    *,
    sessions_out: dict[str, list[ort.InferenceSession]] | None = None,
) -> Classifier:
    """A ready (warmed-up) emotion classifier for ``spec`` (``sessions_out`` as above)."""
    cls = _implementation(spec, "emotion", CLASSIFIERS)
    sessions, provider = _open_into(spec, models_dir, factory, sessions_out)
    return cls(spec, sessions, provider)


def _implementation(spec: ModelSpec, kind: str, registry: Mapping[str, T]) -> T:
    """The class of the registry that implements ``spec``, which must be of ``kind``."""
    if spec.kind != kind:
        is_, _ = _KIND_WORDS[spec.kind]
        raise ModelError(f"'{spec.name}' is {is_}, not {_KIND_WORDS[kind][0]}")
    cls = registry.get(spec.family)
    if cls is None:
        raise ModelError(f"no {_KIND_WORDS[kind][1]} implementation for the '{spec.family}' family")
    return cls


def _open_into(
    spec: ModelSpec,
    models_dir: Path,
    factory: SessionFactory,
    sessions_out: dict[str, list[ort.InferenceSession]] | None,
) -> tuple[list[ort.InferenceSession], str]:
    """:func:`open_sessions`, recording the sessions under the model's name if asked."""
    sessions, provider = open_sessions(spec, models_dir, factory)
    if sessions_out is not None:
        sessions_out[spec.name] = sessions
    return sessions, provider


def _spec(name: str, kind: str) -> ModelSpec:
    spec = CATALOG.get(name)
    if spec is None or spec.kind != kind:
        known = ", ".join(sorted(n for n, s in CATALOG.items() if s.kind == kind))
        what = "detector" if kind == "detector" else "emotion model"
        raise ModelError(f"unknown {what} {name!r}; known: {known}")
    return spec


def _files(spec: ModelSpec, models_dir: Path) -> str:
    return " + ".join(str(p) for p in spec.paths(models_dir))


def _pick(
    kind: str,
    explicit: str | None,
    names: Sequence[str],
    build: Callable[[ModelSpec], T],
    models_dir: Path,
    fallbacks: list[Fallback],
    phase: str,
) -> tuple[str, T]:
    """The model named explicitly (strict: its error is raised as is), else the first of
    the chain that builds, or NoUsableModelError listing every one tried."""
    if explicit:
        return explicit, build(_spec(explicit, kind))
    for pos, name in enumerate(names):
        spec = _spec(name, kind)
        try:
            return name, build(spec)
        except EdgedError as exc:
            fb = Fallback(kind=kind, name=name, reason=str(exc), fix=install_hint(spec))
            fallbacks.append(fb)
            nxt = names[pos + 1] if pos + 1 < len(names) else None
            log.warning(
                "model_fallback",
                kind=kind,
                model=name,
                file=_files(spec, models_dir),
                reason=str(exc),
                next=nxt,
                phase=phase,
            )
    what = "face detector" if kind == "detector" else "emotion model"
    lines = []
    for fb in fallbacks:
        if fb.kind != kind:
            continue
        files = _files(CATALOG[fb.name], models_dir)
        named = all(p in fb.reason for p in files.split(" + "))
        lines.append(
            f"  - {fb.name}: {fb.reason}" if named else f"  - {fb.name} ({files}): {fb.reason}"
        )
    fixes = list(
        dict.fromkeys(install_hint(CATALOG[fb.name]) for fb in fallbacks if fb.kind == kind)
    )
    raise NoUsableModelError(
        f"no usable {what} for phase '{phase}' in {models_dir}; tried:\n"
        + "\n".join(lines)
        + "\ninstall one with: "
        + " or ".join(fixes)
    )


def resolve(
    pipeline_settings: PipelineSettings,
    models_dir: Path,
    factory: SessionFactory,
    *,
    phase: str | None = None,
    detector: str | None = None,
    classifier: str | None = None,
    with_classifier: bool = True,
) -> LoadedModels:
    """The detector and classifier a phase (or explicit names) calls for, with fallback.

    Explicit names (arguments, else ``pipeline_settings.detector``/``.classifier``) are
    strict. ``with_classifier=False`` builds a detection-only set (``classifier`` None).
    The crop mode is ``pipeline_settings.crop`` unless ``auto``, then the phase's (the
    framing itself comes from the classifier's catalogue spec).
    """
    phase_name = phase or pipeline_settings.phase
    if phase_name not in PHASES:
        raise ModelError(f"unknown phase {phase_name!r}; known: {', '.join(PHASES)}")
    ph = PHASES[phase_name]
    fallbacks: list[Fallback] = []
    providers: dict[str, str] = {}
    sessions: dict[str, list[ort.InferenceSession]] = {}
    walk = (models_dir, fallbacks, phase_name)  # where a chain is walked and its failures go

    def build_det(spec: ModelSpec) -> Detector:
        return load_detector(spec, models_dir, factory, pipeline_settings, sessions_out=sessions)

    def build_cls(spec: ModelSpec) -> Classifier:
        return load_classifier(spec, models_dir, factory, sessions_out=sessions)

    explicit = detector or pipeline_settings.detector or None
    det_name, det = _pick("detector", explicit, ph.detectors, build_det, *walk)
    providers[det_name] = det.provider

    cls_obj: Classifier | None = None
    cls_name: str | None = None
    if with_classifier:
        explicit = classifier or pipeline_settings.classifier or None
        cls_name, chosen = _pick("emotion", explicit, ph.classifiers, build_cls, *walk)
        providers[cls_name] = chosen.provider
        cls_obj = chosen

    crop: PhaseCrop = ph.crop if pipeline_settings.crop == "auto" else pipeline_settings.crop
    loaded = LoadedModels(
        detector=det,
        classifier=cls_obj,
        crop=crop,
        smoothing=ph.smoothing,
        phase=phase_name,
        models={"detector": det_name, "classifier": cls_name},
        providers=providers,
        fallbacks=fallbacks,
        sessions={k: v for k, v in sessions.items() if k in providers},
    )
    _log_resolved(loaded)
    return loaded


def _log_resolved(loaded: LoadedModels) -> None:
    log.info(
        "models_resolved",
        phase=loaded.phase,
        detector=loaded.models["detector"],
        classifier=loaded.models["classifier"],
        crop=loaded.crop,
        providers=loaded.providers,
        fallbacks=[fb.name for fb in loaded.fallbacks],
    )
