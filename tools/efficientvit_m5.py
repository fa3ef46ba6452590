"""EfficientViT-M5 (Liu et al., CVPR 2023) in plain PyTorch, for the seed's ``sota_phase3``.

"EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention"
(arXiv 2305.07027). No pretrained weights are reachable from edged's machines and timm is
not a dependency, so the architecture is written out here. Module names, shapes and
initialisation follow the reference (Microsoft Cream / timm ``efficientvit_m5``) so that the
exported backbone has exactly the stand-in's parameters (``efficientvit_m5_backbone.standin
.onnx``, 12,051,260 values after BatchNorm folding), and a timm state dict would map onto
this one key for key (``patch_embed.*``, ``stages.N.downsample.*``, ``stages.N.blocks.*``).

M5: embed dims (192, 288, 384), depths (1, 3, 4), heads (3, 3, 4), key dim 16, window 7,
query depthwise kernels (7, 5, 3, 3); a stride-16 conv stem (four 3x3 stride-2 ConvBN),
then per block the sandwich DWConv → FFN → cascaded group attention → FFN → DWConv, all
residual; between stages a subsample block (DWConv + FFN, PatchMerging with squeeze-excite,
DWConv + FFN).

Files the seed expects (written by :func:`export`)::

    efficientvit/efficientvit_m5_backbone.onnx      input  Nx3xSxS RGB, ImageNet-normalised
                                                    -> features Nx384 (global average pool)
    efficientvit/efficientvit_m5_emotion_head.onnx  features Nx384 -> logits Nx8
                                                    (BatchNorm1d + Linear, HSEmotion 8-class
                                                    order Anger, Contempt, Disgust, Fear,
                                                    Happiness, Neutral, Sadness, Surprise)

Input size. The reference builds each stage's attention for one resolution: the window is
``min(7, stage resolution)`` and the relative-position bias table is sized for it, so a
model built for 224 (windows 7, 7, 4) fails at 112, where stage 3 is 2x2. Here the window
of each stage is fixed when the model is built (``img_size``, like the reference, so a model
built and run at 224 computes exactly what timm computes), and at run time *any* feature
map is padded on the bottom/right to a multiple of the window and split into windows, with
the padded positions

* zeroed in the query before its depthwise conv (they act like the conv's own zero
  padding), and
* masked out as keys (their attention logits set to -inf; every window holds at least
  one real token, as the padding is narrower than a window),

so a padded window computes exactly the attention over its real tokens, with their true
relative offsets. The model therefore runs at any input size (any multiple of 16 keeps the
stem exact; the stem rounds up otherwise), e.g. 64, 112, 128, 160 or 224, whatever size it
was built for. Building for the size it is trained and run at is still the efficient choice
(no padded tokens: at 112 the windows become 7, 4, 2); the ONNX export bakes the spatial
size in, with a dynamic batch.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf

from edged.models.catalog import CATALOG

_SPEC = CATALOG["efficientvit_m5"]

EMBED_DIM = (192, 288, 384)
DEPTH = (1, 3, 4)
NUM_HEADS = (3, 3, 4)
KEY_DIM = 16
WINDOW = 7
KERNELS = (7, 5, 3, 3)
NUM_FEATURES = EMBED_DIM[-1]
#: The catalogue's contract, not a copy: HSEmotion's 8-class order (the head's outputs),
#: ImageNet normalisation and the seed's two file names.
LABELS_8 = _SPEC.labels
MEAN = _SPEC.mean
STD = _SPEC.std
BACKBONE_FILE, HEAD_FILE = _SPEC.files


def stage_resolutions(img_size: int) -> tuple[int, int, int]:
    """Feature-map side of each stage for an ``img_size`` input.

    Each 3x3 stride-2 conv with padding 1 maps n to ceil(n / 2): four in the stem, one in
    each subsample block.
    """
    r = img_size
    for _ in range(4):
        r = (r + 1) // 2
    r1 = (r + 1) // 2
    return r, r1, (r1 + 1) // 2


class ConvNorm(nn.Sequential):
    """Conv2d without bias + BatchNorm2d (folded into one Conv by the ONNX export).

    ``bn_weight_init=0`` starts a residual branch as the identity (the reference does this
    for the last layer of every FFN, the attention projection and the block's DWConvs).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d(in_chs, out_chs, ks, stride, pad, groups=groups, bias=False)
        bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("conv", conv)
        self.add_module("bn", bn)
        self.conv: nn.Conv2d
        self.bn: nn.BatchNorm2d


class SqueezeExcite(nn.Module):
    """Channel gate of PatchMerging: mean → 1x1 conv (÷4) → ReLU → 1x1 conv → sigmoid.

    Reduced width rounded to a multiple of 8 as timm's ``make_divisible`` does.
    """

    def __init__(self, chs: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd = max(8, int(chs * rd_ratio + 4) // 8 * 8)
        if rd < 0.9 * chs * rd_ratio:
            rd += 8
        self.fc1 = nn.Conv2d(chs, rd, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class PatchMerging(nn.Module):
    """Stride-2 downsampling: 1x1 expand x4 → ReLU → 3x3 DW stride 2 → ReLU → SE → 1x1."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hid = dim * 4
        self.conv1 = ConvNorm(dim, hid, 1, 1, 0)
        self.act = nn.ReLU()
        self.conv2 = ConvNorm(hid, hid, 3, 2, 1, groups=hid)
        self.se = SqueezeExcite(hid, 0.25)
        self.conv3 = ConvNorm(hid, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


class ResidualDrop(nn.Module):
    """``x + m(x)``, dropping the branch per sample with probability ``drop`` in training."""

    def __init__(self, m: nn.Module, drop: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop > 0:
            keep = torch.rand(x.size(0), 1, 1, 1, device=x.device) >= self.drop
            return x + self.m(x) * keep.to(x.dtype) / (1 - self.drop)
        return x + self.m(x)


class ConvMlp(nn.Module):
    """The FFN: 1x1 ConvNorm (x2 width) → ReLU → 1x1 ConvNorm (zero-initialised BN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention on windows of ``resolution`` x ``resolution`` tokens.

    The channels are split into one chunk per head; head i attends over its chunk plus the
    output of head i-1 (the cascade), with q refined by a depthwise conv (kernel
    ``kernels[i]``) and a learned bias per relative offset (|dy|, |dx|) added to the logits.

    ``valid`` (windows x 1 x res x res, 1 for real tokens, 0 for padding, or None) is given
    by :class:`LocalWindowAttention` when the map was padded; see the module docstring.
    """

    attention_bias_idxs: torch.Tensor

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        resolution: int,
        kernels: Sequence[int],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.resolution = resolution
        self.qkvs = nn.ModuleList(
            ConvNorm(dim // num_heads, key_dim * 2 + self.d) for _ in range(num_heads)
        )
        self.dws = nn.ModuleList(
            ConvNorm(key_dim, key_dim, kernels[i], 1, kernels[i] // 2, groups=key_dim)
            for i in range(num_heads)
        )
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.d * num_heads, dim, bn_weight_init=0.0))
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        n = len(points)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        bias = self.attention_biases[:, self.attention_bias_idxs]  # heads x N x N
        pad_keys = None
        if valid is not None:
            # windows x 1 x N, broadcast over (batch*windows) viewed as batch x windows
            pad_keys = (valid.flatten(1) == 0).unsqueeze(1)
        feats_in = x.chunk(self.num_heads, dim=1)
        feats_out = []
        feat = feats_in[0]
        for i, qkv in enumerate(self.qkvs):
            if i > 0:
                feat = feat + feats_in[i]
            feat = qkv(feat)
            q, k, v = feat.split([self.key_dim, self.key_dim, self.d], dim=1)
            if valid is not None:
                q = (q.unflatten(0, (-1, valid.shape[0])) * valid).flatten(0, 1)
            q = self.dws[i](q)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            attn = (q.transpose(-2, -1) @ k) * self.scale + bias[i]
            if pad_keys is not None:
                attn = attn.unflatten(0, (-1, pad_keys.shape[0])).masked_fill(pad_keys, -math.inf)
                attn = attn.flatten(0, 1)
            attn = attn.softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(-1, self.d, h, w)
            feats_out.append(feat)
        return self.proj(torch.cat(feats_out, 1))


class LocalWindowAttention(nn.Module):
    """Splits the map into windows of ``window_resolution``, padding it when needed.

    Unlike the reference (which asserts the map has the size it was built for), any map
    size works: the map is padded bottom/right to a multiple of the window, padded tokens
    are masked (module docstring), and the windows are batched through the attention.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        resolution: int,
        window_resolution: int,
        kernels: Sequence[int],
    ) -> None:
        super().__init__()
        self.window_resolution = min(window_resolution, resolution)
        self.attn = CascadedGroupAttention(
            dim, key_dim, num_heads, attn_ratio, self.window_resolution, kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        ws = self.window_resolution
        if h == ws and w == ws:
            return self.attn(x)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        valid = None
        if pad_b or pad_r:
            x = nnf.pad(x, (0, pad_r, 0, pad_b))
            m = torch.zeros(1, 1, ph, pw, dtype=x.dtype, device=x.device)
            m[:, :, :h, :w] = 1
            valid = self._partition(m, 1, nh, nw, ws)
        x = self._partition(x, c, nh, nw, ws)
        x = self.attn(x, valid)
        # (B nH nW) C ws ws -> B C (nH ws) (nW ws)
        x = x.view(-1, nh, nw, c, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, ph, pw)
        if pad_b or pad_r:
            x = x[:, :, :h, :w].contiguous()
        return x

    @staticmethod
    def _partition(x: torch.Tensor, c: int, nh: int, nw: int, ws: int) -> torch.Tensor:
        """B C (nH ws) (nW ws) -> (B nH nW) C ws ws, windows in row-major order."""
        x = x.view(-1, c, nh, ws, nw, ws).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, c, ws, ws)


class EfficientViTBlock(nn.Module):
    """The sandwich: DWConv → FFN → window attention → FFN → DWConv, each residual."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        resolution: int,
        window_resolution: int,
        kernels: Sequence[int],
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dw0 = ResidualDrop(
            ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0), drop_path
        )
        self.ffn0 = ResidualDrop(ConvMlp(dim, dim * 2), drop_path)
        self.mixer = ResidualDrop(
            LocalWindowAttention(
                dim, key_dim, num_heads, attn_ratio, resolution, window_resolution, kernels
            ),
            drop_path,
        )
        self.dw1 = ResidualDrop(
            ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0), drop_path
        )
        self.ffn1 = ResidualDrop(ConvMlp(dim, dim * 2), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class EfficientViTStage(nn.Module):
    """Optional subsample block (DWConv + FFN, PatchMerging, DWConv + FFN), then blocks."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        subsample: bool,
        num_heads: int,
        resolution: int,
        depth: int,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if subsample:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        (
                            "res1",
                            nn.Sequential(
                                ResidualDrop(ConvNorm(in_dim, in_dim, 3, 1, 1, groups=in_dim)),
                                ResidualDrop(ConvMlp(in_dim, in_dim * 2)),
                            ),
                        ),
                        ("patchmerge", PatchMerging(in_dim, out_dim)),
                        (
                            "res2",
                            nn.Sequential(
                                ResidualDrop(ConvNorm(out_dim, out_dim, 3, 1, 1, groups=out_dim)),
                                ResidualDrop(ConvMlp(out_dim, out_dim * 2)),
                            ),
                        ),
                    ]
                )
            )
        else:
            self.downsample = nn.Identity()
        attn_ratio = out_dim / (KEY_DIM * num_heads)
        self.blocks = nn.Sequential(
            *(
                EfficientViTBlock(
                    out_dim, KEY_DIM, num_heads, attn_ratio, resolution, WINDOW, KERNELS, drop_path
                )
                for _ in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class PatchEmbedding(nn.Sequential):
    """Stride-16 stem: four 3x3 stride-2 ConvNorm (dim/8, /4, /2, dim) with ReLU between."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.add_module("conv1", ConvNorm(in_chans, dim // 8, 3, 2, 1))
        self.add_module("relu1", nn.ReLU())
        self.add_module("conv2", ConvNorm(dim // 8, dim // 4, 3, 2, 1))
        self.add_module("relu2", nn.ReLU())
        self.add_module("conv3", ConvNorm(dim // 4, dim // 2, 3, 2, 1))
        self.add_module("relu3", nn.ReLU())
        self.add_module("conv4", ConvNorm(dim // 2, dim, 3, 2, 1))


class EfficientViTM5Backbone(nn.Module):
    """EfficientViT-M5 without its classifier: Nx3xSxS → Nx384 (global average pool)."""

    def __init__(self, img_size: int = 224, drop_path: float = 0.0) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbedding(3, EMBED_DIM[0])
        res = stage_resolutions(img_size)
        stages = []
        for i, (dim, depth, heads) in enumerate(zip(EMBED_DIM, DEPTH, NUM_HEADS, strict=True)):
            prev = EMBED_DIM[i - 1] if i else dim
            stages.append(EfficientViTStage(prev, dim, i > 0, heads, res[i], depth, drop_path))
        self.stages = nn.Sequential(*stages)
        self.num_features = NUM_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x)).mean((2, 3))

    def window_sizes(self) -> list[int]:
        """The attention window of each block (fixed by ``img_size`` at build time)."""
        return [m.window_resolution for m in self.modules() if isinstance(m, LocalWindowAttention)]


def make_head(num_classes: int = 8) -> nn.Sequential:
    """The emotion head as the stand-in has it: ``0`` BatchNorm1d(384), ``1`` Linear.

    Linear weights truncated-normal (std 0.02), bias 0, as timm's BNLinear head.
    """
    linear = nn.Linear(NUM_FEATURES, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.constant_(linear.bias, 0)
    return nn.Sequential(nn.BatchNorm1d(NUM_FEATURES), linear)


class EfficientViTEmotion(nn.Module):
    """Backbone + head; ``dropout`` sits between them in training only (not in the files)."""

    def __init__(
        self,
        num_classes: int = 8,
        img_size: int = 224,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = EfficientViTM5Backbone(img_size, drop_path)
        self.drop = nn.Dropout(dropout)
        self.head = make_head(num_classes)
        self.config = {
            "num_classes": num_classes,
            "img_size": img_size,
            "drop_path": drop_path,
            "dropout": dropout,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x)))


def build(
    num_classes: int = 8, img_size: int = 224, drop_path: float = 0.0, dropout: float = 0.0
) -> EfficientViTEmotion:
    """A randomly initialised EfficientViT-M5 emotion model.

    ``img_size`` fixes the attention windows (``min(7, stage side)``) and thus the shape of
    the relative-bias tables in the state dict; the model still runs at any size.
    """
    return EfficientViTEmotion(num_classes, img_size, drop_path, dropout)


def fused_param_count(module: nn.Module) -> int:
    """Parameters as an ONNX export stores them: each ConvNorm folded to Conv weight + bias.

    This is what can be compared with a stand-in's initializers (BatchNorm2d's 2 x C
    parameters become the conv's C biases); BatchNorm1d of the head stays unfolded.
    """
    folded = {id(c) for cn in module.modules() if isinstance(cn, ConvNorm) for c in cn}
    n = 0
    for m in module.modules():
        if isinstance(m, ConvNorm):
            n += m.conv.weight.numel() + m.bn.num_features
        elif isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d)) and id(m) not in folded:
            n += sum(p.numel() for p in m.parameters(recurse=False))
        elif isinstance(m, CascadedGroupAttention):
            n += m.attention_biases.numel()
    return n


def onnx_param_count(path: str | Path) -> int:
    """Values behind an ONNX file's weights, counting initializers shared through
    ``Identity`` once per use (the exporter de-duplicates equal tensors, e.g. the zeros of
    a random init, so the bare initializer total undercounts a stand-in)."""
    import numpy as np
    import onnx

    g = onnx.load(str(path)).graph
    size = {i.name: int(np.prod(i.dims)) for i in g.initializer}
    alias = {
        n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in size
    }
    used = {
        i for n in g.node if n.op_type != "Identity" for i in n.input if i in size or i in alias
    }
    return sum(size[alias.get(u, u)] for u in used)


def _export_one(
    module: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str
) -> None:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose: the
        warnings.simplefilter("ignore")  # dynamo one needs onnxscript, not installed here
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def export(
    model: EfficientViTEmotion,
    out_dir: str | Path,
    input_size: int,
    *,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write the seed's two files under ``out_dir`` and check them against torch.

    The model is copied to the CPU in eval mode (BatchNorm with running statistics, no
    dropout), so the caller's training model is untouched. The files get opset 17, a
    dynamic batch axis and the names ``input``/``features`` and ``features``/``logits``.
    Both files and the chain are run with onnxruntime on a random batch of 3 and compared
    with torch; a difference above ``tolerance`` raises RuntimeError.

    Returns the two paths and the measured maximum absolute differences.
    """
    import numpy as np
    import onnxruntime as ort

    out_dir = Path(out_dir)
    m = copy.deepcopy(model).float().cpu().eval()
    bb_path, head_path = out_dir / BACKBONE_FILE, out_dir / HEAD_FILE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, input_size, input_size, generator=gen)
    with torch.no_grad():
        feats = m.backbone(x)
        logits = m.head(feats)
    _export_one(m.backbone, x[:2], bb_path, "input", "features")
    _export_one(m.head, feats[:2], head_path, "features", "logits")

    def session(p: Path) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())
        return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

    bb, hd = session(bb_path), session(head_path)
    got_f = bb.run(["features"], {"input": x.numpy()})[0]
    got_l = hd.run(["logits"], {"features": feats.numpy()})[0]
    chain = hd.run(["logits"], {"features": got_f})[0]
    diffs = {
        "backbone": float(np.abs(got_f - feats.numpy()).max()),
        "head": float(np.abs(got_l - logits.numpy()).max()),
        "chain": float(np.abs(chain - logits.numpy()).max()),
    }
    if max(diffs.values()) > tolerance:
        raise RuntimeError(f"ONNX differs from torch by more than {tolerance}: {diffs}")
    return {"backbone": bb_path, "head": head_path, "max_abs_diff": diffs}
