"""tools/efficientvit_m5.py: the seed's phase-3 EfficientViT-M5, exported in the seed layout.

Torch is a training-only dependency (the ``train`` extra; CI installs ``dev`` only), so the
whole module is skipped without it. Everything runs at 64x64 with a batch of 2, so each
test takes a few seconds on a small CPU; the export is done once per module.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.conftest import REPO, shared_root  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
import efficientvit_m5 as evit  # noqa: E402

from edged.models.catalog import CATALOG  # noqa: E402
from edged.models.loader import load_classifier, validate_session  # noqa: E402
from edged.models.providers import SessionFactory  # noqa: E402

SIZE = 64
#: The backbone's parameters after BatchNorm folding must equal the stand-in's: the same
#: architecture has the same count, so the tolerance is only there to name the claim.
PARAM_TOLERANCE = 0.001


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """One torch thread: on a small, busy CI runner more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model224() -> Any:
    return evit.build(img_size=224).eval()


def _activate(model: torch.nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics/affines and attention biases: a fresh model's residual
    branches start as zero (BN weight 0) and its biases are 0, which would hide errors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            elif isinstance(m, evit.CascadedGroupAttention):
                m.attention_biases.copy_(torch.randn(m.attention_biases.shape, generator=g))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    model = evit.build(img_size=SIZE).eval()
    _activate(model)
    out = tmp_path_factory.mktemp("evit")
    result = evit.export(model, out, SIZE)
    return {"model": model, "dir": out, **result}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _io(session: ort.InferenceSession) -> tuple[list[tuple[str, list[Any]]], ...]:
    return (
        [(i.name, list(i.shape)) for i in session.get_inputs()],
        [(o.name, list(o.shape)) for o in session.get_outputs()],
    )


def _standin(name: str) -> Path:
    return shared_root() / "models" / "standin" / f"efficientvit_m5_{name}.standin.onnx"


def test_files_in_seed_layout_with_the_standins_io(exported: dict[str, Any]) -> None:
    out = exported["dir"]
    assert exported["backbone"] == out / "efficientvit/efficientvit_m5_backbone.onnx"
    assert exported["head"] == out / "efficientvit/efficientvit_m5_emotion_head.onnx"
    bb, head = _session(exported["backbone"]), _session(exported["head"])
    assert len(bb.get_inputs()) == len(bb.get_outputs()) == 1
    assert bb.get_inputs()[0].name == "input" and bb.get_outputs()[0].name == "features"
    assert isinstance(bb.get_inputs()[0].shape[0], str)  # dynamic batch
    assert bb.get_inputs()[0].shape[1:] == [3, SIZE, SIZE]
    assert bb.get_outputs()[0].shape[1:] == [384]
    # the head's I/O is the stand-in head's exactly (no spatial size in it)
    assert _io(head) == _io(_session(_standin("emotion_head")))
    # the backbone's names and the non-spatial dims are the stand-in backbone's
    (s_in, s_out), (m_in, m_out) = _io(_session(_standin("backbone"))), _io(bb)
    assert [n for n, _ in s_in] == [n for n, _ in m_in]
    assert s_out == m_out
    for path in (exported["backbone"], exported["head"]):
        assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 17


def test_onnx_equals_torch(exported: dict[str, Any]) -> None:
    assert max(exported["max_abs_diff"].values()) <= 1e-4
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), np.float32))
    with torch.no_grad():
        ref_f = exported["model"].backbone(x).numpy()
        ref = exported["model"](x).numpy()
    feats = _session(exported["backbone"]).run(["features"], {"input": x.numpy()})[0]
    logits = _session(exported["head"]).run(["logits"], {"features": feats})[0]
    assert np.abs(ref_f).max() > 1e-2  # the activated model's features are not ~0
    np.testing.assert_allclose(feats, ref_f, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


def test_batch_of_two_equals_one_by_one(exported: dict[str, Any]) -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    bb, head = _session(exported["backbone"]), _session(exported["head"])

    def run(batch: np.ndarray) -> np.ndarray:
        return head.run(["logits"], {"features": bb.run(["features"], {"input": batch})[0]})[0]

    both = run(x)
    single = np.concatenate([run(x[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(both, single, atol=1e-5, rtol=0)


def test_head_is_batchnorm_plus_linear_and_loads_as_the_standin_head(
    exported: dict[str, Any],
) -> None:
    spec = CATALOG["efficientvit_m5"]
    ops = [n.op_type for n in onnx.load(str(exported["head"])).graph.node]
    standin_ops = [n.op_type for n in onnx.load(str(_standin("emotion_head"))).graph.node]
    assert [o for o in ops if o != "Identity"] == ["BatchNormalization", "Gemm"]
    assert [o for o in standin_ops if o != "Identity"] == ["BatchNormalization", "Gemm"]
    for path in (exported["head"], _standin("emotion_head")):
        validate_session(spec, 1, path, _session(path))  # raises on a mismatch


def test_pair_loads_through_edgeds_loader(exported: dict[str, Any]) -> None:
    """The catalogue fixes 224; an export at another size needs the entry's size changed,
    which is all that differs (here: a copy of the entry at 64)."""
    spec = CATALOG["efficientvit_m5"]
    at_size = dataclasses.replace(
        spec, input_size=SIZE, inputs=(((None, 3, SIZE, SIZE),), *spec.inputs[1:])
    )
    clf = load_classifier(
        at_size, exported["dir"], SessionFactory(providers=["cpu"], intra_op_threads=1)
    )
    crops = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    probs = np.asarray(clf(list(crops)))
    assert probs.shape == (2, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_backbone_param_count_matches_standin(model224: Any) -> None:
    standin = evit.onnx_param_count(_standin("backbone"))
    ours = evit.fused_param_count(model224.backbone)
    assert abs(ours - standin) <= PARAM_TOLERANCE * standin, (ours, standin)
    head = sum(p.numel() for p in evit.make_head(8).parameters())
    standin_head = onnx.load(str(_standin("emotion_head"))).graph.initializer
    assert head == sum(int(np.prod(i.dims)) for i in standin_head)


@pytest.mark.parametrize("size", [64, 96, 112])
def test_runs_at_sizes_other_than_it_was_built_for(model224: Any, size: int) -> None:
    # built for 224: windows 7, 7, 4, so every stage is padded at these sizes
    assert model224.backbone.window_sizes() == [7, 7, 7, 7, 4, 4, 4, 4]
    with torch.no_grad():
        y = model224(torch.randn(2, 3, size, size))
    assert y.shape == (2, 8) and bool(torch.isfinite(y).all())


def test_padded_window_is_exact_attention_over_the_real_tokens() -> None:
    """A 4x4 map inside a 7x7 window (padded, masked) equals attention built for 4x4 with
    the same weights and the same bias per relative offset."""

    def offsets(r: int) -> dict[tuple[int, int], int]:
        pts = list(itertools.product(range(r), range(r)))
        d: dict[tuple[int, int], int] = {}
        for a, b in itertools.product(pts, pts):
            d.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(d))
        return d

    torch.manual_seed(0)
    big = evit.LocalWindowAttention(192, 16, 3, 4.0, 14, 7, evit.KERNELS).eval()
    small = evit.LocalWindowAttention(192, 16, 3, 4.0, 4, 7, evit.KERNELS).eval()
    _activate(big)
    with torch.no_grad():
        for p in big.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        state = {k: v for k, v in big.state_dict().items() if "attention_biases" not in k}
        small.load_state_dict(state, strict=False)
        ob = offsets(7)
        for off, i in offsets(4).items():
            small.attn.attention_biases[:, i] = big.attn.attention_biases[:, ob[off]]
        x = torch.randn(2, 192, 4, 4)
        got, ref = big(x), small(x)
    assert big.window_resolution == 7 and small.window_resolution == 4
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
