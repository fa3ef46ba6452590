"""Tiny random-weight ONNX models built with ``onnx.helper`` for tests only.

They have the exact I/O contract of models that do not exist yet (edged's own FER model is
being trained) or of exports the shared stand-ins do not cover (a fixed batch of 1), and
take milliseconds to run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_fer_model(path: Path, classes: int = 7, seed: int = 0) -> Path:
    """``input`` [batch, 1, 48, 48] → Flatten → Gemm → ``logits`` [batch, classes]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (48 * 48, classes)).astype(np.float32)
    b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "tiny_fer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path)


def make_pooled_rgb_model(
    path: Path, size: int, classes: int, batch: int | str = "batch", seed: int = 0
) -> Path:
    """``input`` [batch, 3, size, size] → global average pool → Gemm → ``output`` [batch, C].

    With ``batch=1`` it plays an HSEmotion-style export with a fixed batch of one.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (3, classes)).astype(np.float32)
    b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["output"]),
        ],
        "tiny_rgb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path)
