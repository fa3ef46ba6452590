"""The network of edged's own FER models: a small VGG-style CNN on 48x48 gray faces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged_train.data import NUM_CLASSES

DEFAULT_WIDTHS = (48, 96, 192, 256)


def build_model(
    widths: tuple[int, ...] = DEFAULT_WIDTHS, num_classes: int = NUM_CLASSES, dropout: float = 0.4
) -> Any:
    """4 stages of 2x (conv3x3-BN-ReLU), max-pool between, global average pool, linear.

    Fully convolutional up to the pooling, so the same weights run on any view size (the
    test-time modes of :mod:`edged_train.export`)."""
    import torch.nn as nn

    class EdgedFERNet(nn.Module):
        """VGG-style CNN: 4 stages of 2x (conv3x3-BN-ReLU), max-pool between, GAP, linear."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin = 1
            for k, c in enumerate(widths):
                for _ in range(2):
                    layers += [
                        nn.Conv2d(cin, c, 3, padding=1, bias=False),
                        nn.BatchNorm2d(c),
                        nn.ReLU(inplace=True),
                    ]
                    cin = c
                if k < len(widths) - 1:
                    layers.append(nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(cin, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: Any) -> Any:
            x = self.pool(self.features(x)).flatten(1)
            return self.fc(self.drop(x))

    return EdgedFERNet()


def widen(net: Any, widths: tuple[int, ...], noise: float = 0.01, seed: int = 0) -> Any:
    """``net`` with more channels per stage that computes the same function (Net2WiderNet,
    Chen et al. 2016): each new channel copies a random existing one (its conv filter and
    BatchNorm), and the next layer's weights from a copied channel are shared out among its
    copies. ``noise`` (relative to each layer's weight spread) on the new filters lets the
    copies learn apart. A wider network can so start from a trained one's function instead
    of from random weights, which a CPU's training budget could not make up for.
    """
    import torch
    import torch.nn as nn

    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.features if isinstance(m, nn.BatchNorm2d)]
    old = [c.out_channels for c in convs[::2]]
    if len(widths) != len(old) or any(w < o for w, o in zip(widths, old, strict=True)):
        raise ValueError(f"cannot widen stages {tuple(old)} to {tuple(widths)}")
    gen = torch.Generator().manual_seed(seed)
    wide = build_model(tuple(widths), net.fc.out_features, net.drop.p)
    wconvs = [m for m in wide.features if isinstance(m, nn.Conv2d)]
    wbns = [m for m in wide.features if isinstance(m, nn.BatchNorm2d)]
    prev_map: torch.Tensor | None = None  # new input channel -> old channel
    prev_count: torch.Tensor | None = None  # copies of each old channel
    with torch.no_grad():
        for conv, bn, wconv, wbn in zip(convs, bns, wconvs, wbns, strict=True):
            c_old, c_new = conv.out_channels, wconv.out_channels
            extra = torch.randint(0, c_old, (c_new - c_old,), generator=gen)
            out_map = torch.cat([torch.arange(c_old), extra])
            w = conv.weight[out_map]
            if prev_map is not None and prev_count is not None:
                w = w[:, prev_map] / prev_count[prev_map].view(1, -1, 1, 1)
            if c_new > c_old and noise > 0:
                spread = float(conv.weight.std())
                w[c_old:] += noise * spread * torch.randn(w[c_old:].shape, generator=gen)
            wconv.weight.copy_(w)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(wbn, name).copy_(getattr(bn, name)[out_map])
            tracked, src = wbn.num_batches_tracked, bn.num_batches_tracked
            assert tracked is not None and src is not None  # BatchNorm2d tracks by default
            tracked.copy_(src)
            prev_map, prev_count = out_map, torch.bincount(out_map, minlength=c_old).float()
        assert prev_map is not None and prev_count is not None
        wide.fc.weight.copy_(net.fc.weight[:, prev_map] / prev_count[prev_map].view(1, -1))
        wide.fc.bias.copy_(net.fc.bias)
    return wide


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return ck


def load_trained(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A trained .pt (state_dict + arch) as an eval-mode network on the CPU, with its checkpoint."""
    ck = load_checkpoint(path)
    net = build_model(tuple(ck["arch"]["widths"]), NUM_CLASSES, ck["arch"].get("dropout", 0.4))
    net.load_state_dict(ck["state_dict"])
    return net.eval(), ck


def ensemble(nets: list[Any]) -> Any:
    """One teacher from several trained networks: the mean of their logits.

    Runs that differ in seed, targets or start point err on different faces; their mean is
    a better teacher than any one of them, and distilling it gives the daemon one set of
    weights, one file and one call per face (an ensemble in the graph would cost N calls)."""
    import torch
    import torch.nn as nn

    if len(nets) == 1:
        return nets[0]

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(nets)

        def forward(self, x: Any) -> Any:
            return torch.stack([m(x) for m in self.members]).mean(0)

    return Ensemble().eval()
