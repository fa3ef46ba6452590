"""ONNX Runtime sessions from a provider preference list: the one place sessions are built.

The preference is a list of short names (``tensorrt``, ``cuda``, ``cpu``). Each is tried in
order; one that is not compiled into the installed onnxruntime, or that fails to initialise
(no GPU, missing CUDA/TensorRT libraries), is skipped with a ``provider_skipped`` log line
naming it and the reason. ONNX Runtime silently falls back to CPU when a GPU provider fails
inside a session, so the provider actually used is read back from the session, never
assumed, and is reported per model in the log, the heartbeat and ``/health``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edged.errors import ModelError, ProviderError
from edged.models.catalog import ModelKind

try:
    import onnxruntime as ort
except ImportError as exc:  # the runtime is an extra: edged[cpu], edged[gpu], or NVIDIA's
    raise ProviderError(
        "ONNX Runtime is not installed: pip install 'edged[cpu]' (or 'edged[gpu]' for "
        "CUDA/TensorRT; on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack)"
    ) from exc

log = structlog.get_logger(__name__)

ORT_NAMES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES: dict[str, str] = {v: k for k, v in ORT_NAMES.items()}

#: Most intra-op threads a session gets by default. The detector (one 640x640 image) and
#: the classifier (a handful of small crops) stop scaling past ~4 threads on ONNX Runtime's
#: CPU kernels while every extra thread still costs a wake-up per op.
MAX_DEFAULT_THREADS = 4


def default_threads(cpu_count: int | None, kind: ModelKind) -> int:
    """Intra-op threads for a ``kind`` model on a machine with ``cpu_count`` cores (0 = auto).

    The daemon runs its models one after the other in a single inference thread (detector,
    then the classifier on the faces due), so the two sessions never compete with each
    other; they compete with frame decoding (one capture thread per camera) and the event
    loop (MQTT, /health). Hence:

    * 1-2 cores: 1 thread each. On a loaded 2-vCPU VM a second thread won nothing
      consistent for YuNet + edged_fer (fp32 or int8): the one-face frame was equal
      within 1 ms, the 173-face crowd 12 % slower in fp32 and 20 % faster in int8, each
      inside the round-to-round spread (tools/bench.py, README "Doing less work per
      frame"), and the core it would take is the one frame decoding needs.
    * 3+ cores: all cores but one (left to capture and the loop), at most
      :data:`MAX_DEFAULT_THREADS`.

    Detector and classifier get the same number today; ``kind`` keeps the decision per
    model in this one place should a measurement ever separate them.
    """
    del kind  # same rule for both kinds (see above)
    cores = max(cpu_count or 1, 1)
    if cores <= 2:
        return 1
    return min(cores - 1, MAX_DEFAULT_THREADS)


@dataclass
class SessionFactory:
    """Builds sessions for every model with one provider policy.

    ``trt_cache_dir`` keeps TensorRT engines between starts (building one takes minutes on
    a Jetson); ``trt_fp16`` enables half precision where the GPU supports it.
    ``intra_op_threads`` 0 lets :func:`default_threads` choose per model for this machine;
    ``cpu_count`` is the machine's (``os.cpu_count()`` unless given).
    """

    providers: list[str] = field(default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    trt_cache_dir: Path | None = None
    trt_fp16: bool = True
    intra_op_threads: int = 0
    device_id: int = 0
    cpu_count: int | None = field(default_factory=os.cpu_count)

    def threads(self, kind: ModelKind) -> int:
        """The intra-op threads a ``kind`` session gets: the config's, else the machine's."""
        return self.intra_op_threads or default_threads(self.cpu_count, kind)

    def available(self) -> list[str]:
        """Short names of the requested providers compiled into this onnxruntime."""
        compiled = set(ort.get_available_providers())
        return [p for p in self.providers if ORT_NAMES[p] in compiled]

    def _session_options(self, kind: ModelKind) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = self.threads(kind)
        # Sequential execution (ORT's default): inter-op threads would only run independent
        # branches in parallel, and these models are chains.
        so.inter_op_num_threads = 1
        # No busy-waiting between ops: on a Jetson or a small PC the cores are shared with
        # capture and MQTT, and spinning threads cost more than they save (measured with
        # tools/bench.py on 2 cores: one-face frame 171 ms -> 70-96 ms).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def _options(self, name: str) -> dict[str, Any]:
        if name == "tensorrt":
            opts: dict[str, Any] = {"device_id": self.device_id, "trt_fp16_enable": self.trt_fp16}
            if self.trt_cache_dir is not None:
                self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(self.trt_cache_dir),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(self.trt_cache_dir),
                )
            return opts
        if name == "cuda":
            return {"device_id": self.device_id}
        return {}

    def create(self, path: Path, kind: ModelKind = "detector") -> tuple[ort.InferenceSession, str]:
        """A session for ``path`` on the first provider that works, and that provider's name.

        ``kind`` picks the thread count (:meth:`threads`).

        Raises ModelError when the file itself cannot be loaded (missing, truncated, not
        ONNX): that is the model's fault, not the provider's, and no other provider would
        do better. Raises ProviderError when no requested provider can run it.
        """
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        compiled = set(ort.get_available_providers())
        so = self._session_options(kind)
        reasons: list[str] = []
        for name in self.providers:
            ort_name = ORT_NAMES[name]
            if ort_name not in compiled:
                reason = "not available in the installed onnxruntime"
                log.info("provider_skipped", provider=name, model=str(path), reason=reason)
                reasons.append(f"{name}: {reason}")
                continue
            chain: list[Any] = [(ort_name, self._options(name))]
            if name != "cpu":
                # Keep CPU for ops the GPU provider cannot take; we check what ends up first.
                chain.append("CPUExecutionProvider")
            try:
                session = ort.InferenceSession(str(path), sess_options=so, providers=chain)
            except Exception as exc:  # onnxruntime raises several unrelated types
                if _is_model_fault(exc):
                    raise ModelError(f"cannot load model {path}: {_short(exc)}") from exc
                log.warning("provider_skipped", provider=name, model=str(path), reason=_short(exc))
                reasons.append(f"{name}: {_short(exc)}")
                continue
            used = SHORT_NAMES.get(session.get_providers()[0], session.get_providers()[0])
            if used != name:
                log.warning(
                    "provider_skipped",
                    provider=name,
                    model=str(path),
                    reason=f"failed to initialise, session fell back to {used}",
                )
                reasons.append(f"{name}: fell back to {used}")
                if used != "cpu" or "cpu" in self.providers:
                    return session, used
                continue
            log.info("model_session", model=str(path), provider=used)
            return session, used
        raise ProviderError(f"no execution provider could load {path}: " + "; ".join(reasons))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _is_model_fault(exc: BaseException) -> bool:
    """True when onnxruntime rejected the file itself (protobuf parse, graph check)."""
    text = str(exc)
    markers = (
        "INVALID_PROTOBUF",
        "INVALID_GRAPH",
        "Protobuf parsing failed",
        "NO_SUCHFILE",
        "Load model from",
        "ModelProto",
        "model_path",
    )
    return any(m in text for m in markers)
