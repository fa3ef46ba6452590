"""Test-time views and the ONNX export: the daemon's graph takes the 48x48 input and
averages the views of the mode chosen on validation inside the graph.

:func:`tta_logits` is the one definition of a mode: validation (which chooses the mode)
and the exported graph both call it, so they cannot disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edged_train.data import SIZE


def parse_mode(mode: str) -> tuple[list[int] | None, bool]:
    """Test-time mode -> (input sizes, flip). ``full`` is the 48x48 input as is, ``center``
    the training crop cut from its middle (sizes None), ``msA-B-C`` the 48x48 input resized
    to AxA, BxB, CxC (multi-scale); a ``_flip`` suffix adds the mirrored view of each."""
    base, flip = (mode[: -len("_flip")], True) if mode.endswith("_flip") else (mode, False)
    if base == "full":
        return [SIZE], flip
    if base == "center":
        return None, flip
    if base.startswith("ms") and base[2:]:
        try:
            sizes = [int(v) for v in base[2:].split("-")]
        except ValueError:
            sizes = []
        if sizes and all(16 <= v <= 4 * SIZE for v in sizes):
            return sizes, flip
    raise SystemExit(f"unknown test-time mode {mode!r} (full, center, msA-B-C, each +_flip)")


def mode_cost(mode: str, crop: int) -> float:
    """Compute of a test-time mode relative to one 48x48 pass (pixels processed)."""
    sizes, flip = parse_mode(mode)
    area = (crop / SIZE) ** 2 if sizes is None else sum((v / SIZE) ** 2 for v in sizes)
    return area * (2 if flip else 1)


def tta_logits(net: Any, x: Any, mode: str, crop: int) -> Any:
    """Mean logits of ``net`` over the views of a test-time mode."""
    import torch
    import torch.nn.functional as nnf

    sizes, flip = parse_mode(mode)
    if sizes is None:
        off = (SIZE - crop) // 2
        views = [x[:, :, off : off + crop, off : off + crop]]
    else:
        views = [
            x
            if v == SIZE
            else nnf.interpolate(x, size=(v, v), mode="bilinear", align_corners=False)
            for v in sizes
        ]
    ys = []
    for v in views:
        ys.append(net(v).float())
        if flip:
            ys.append(net(torch.flip(v, dims=[3])).float())
    return ys[0] if len(ys) == 1 else torch.stack(ys).mean(0)


def make_export_module(net: Any, mode: str, crop: int) -> Any:
    """Wrap the network so that the graph takes the 48x48 daemon input and applies the
    test-time mode chosen on validation (one network; the views are averaged in-graph)."""
    import torch.nn as nn

    parse_mode(mode)  # fail before export on a bad mode

    class Deploy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return tta_logits(self.net, x, mode, crop)

    return Deploy()


def choose_mode(metric_by_mode: dict[str, float], tolerance: float, crop: int) -> str:
    """The cheapest mode within ``tolerance`` of the best validation figure."""
    best = max(metric_by_mode.values())
    return min(
        (m for m, a_ in metric_by_mode.items() if a_ >= best - tolerance),
        key=lambda m: mode_cost(m, crop),
    )


def export_onnx(
    net: Any, mode: str, crop: int, onnx_path: Path, probe: Any, log: Callable[[str], None]
) -> Any:
    """Export ``net`` with ``mode`` baked in, check it against torch on ``probe``
    (within 1e-4) and return its onnxruntime session."""
    import onnxruntime as ort
    import torch

    deploy = make_export_module(net, mode, crop).eval()
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter is chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            deploy,
            (torch.randn(4, 1, SIZE, SIZE),),
            str(onnx_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probe = probe.contiguous()
    with torch.no_grad():
        ref = deploy(probe).numpy()
    got = sess.run(["logits"], {"input": probe.numpy().astype(np.float32)})[0]
    max_diff = float(np.abs(ref - got).max())
    log(f"ONNX check {onnx_path.name}: max |torch - onnxruntime| = {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit(f"ONNX output of {onnx_path} differs from torch by {max_diff}")
    return sess


def onnx_accuracy(sess: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of an exported graph, in batches of 512."""
    z = np.concatenate(
        [sess.run(["logits"], {"input": x[i : i + 512]})[0] for i in range(0, len(x), 512)]
    )
    return float((z.argmax(1) == y).mean())
