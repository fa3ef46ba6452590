#!/usr/bin/env python3
"""Train edged's own facial-emotion classifier (FER2013, 7 classes) and export it to ONNX.

PyTorch is a *training-only* dependency (the ``train`` extra); the daemon only ever loads the
exported ONNX file.

Model contract (what the daemon's classifier expects, recorded in the JSON sidecar):
  input  ``input``  float32 [batch, 1, 48, 48]: face crop -> grayscale (cv2.COLOR_BGR2GRAY)
         -> cv2.resize(48x48, INTER_AREA) -> /255 -> (x - 0.5) / 0.5
  output ``logits`` float32 [batch, 7] in the order
         angry, disgust, fear, happy, neutral, sad, surprise

Typical use
  # train from scratch on FER2013 (train split only; a validation split is held out of it)
  python tools/train_emotion.py --data ../shared/datasets/fer2013_train.npz \
      --test-data ../shared/datasets/fer2013_test.npz --out models/edged_fer --epochs 70

  # fine-tune the shipped model on your own images
  # (DIR/<label>/*.jpg, label one of neutral happy sad angry fearful disgusted surprised)
  python tools/train_emotion.py --image-folder DIR \
      --init-checkpoint models/edged_fer/edged_fer_v2.pt --out my_model --epochs 15

Test data is never used for training or model selection: ``--test-data`` only adds a
reporting figure to the sidecar after the model has been chosen on the validation split.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# canonical edged labels for the 7 FER classes (same order as FER_CLASSES)
CANONICAL = ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
# folder names accepted by --image-folder -> class index (canonical names and FER names)
FOLDER_TO_INDEX = {
    **{n: i for i, n in enumerate(CANONICAL)},
    **{n: i for i, n in enumerate(FER_CLASSES)},
}
IGNORED_FOLDERS = {"contemptuous", "contempt"}
# FER+ vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
# unknown, NF
FERPLUS_TO_FER = [4, 3, 6, 5, 0, 1, 2]  # FER+ column j (j<7) -> FER class index
MEAN, STD, SIZE = 0.5, 0.5, 48
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preprocess_bgr(img: np.ndarray) -> np.ndarray:
    """The daemon's preprocessing up to the float step: BGR/gray uint8 -> 48x48 gray uint8."""
    import cv2

    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.shape[:2] != (SIZE, SIZE):
        img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return img


def load_image_folder(root: str | Path):
    """DIR/<label>/* -> (images uint8 Nx48x48, labels int64, files); unknown folders: error."""
    import cv2

    root = Path(root)
    images, labels, files = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        name = sub.name.lower()
        if name in IGNORED_FOLDERS:
            print(f"[data] ignoring {sub} (not one of the 7 classes of this model)")
            continue
        if name not in FOLDER_TO_INDEX:
            raise SystemExit(
                f"unknown label folder {sub}; expected one of {CANONICAL} (or contemptuous)"
            )
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is None:
                print(f"[data] unreadable, skipped: {f}")
                continue
            images.append(preprocess_bgr(img))
            labels.append(FOLDER_TO_INDEX[name])
            files.append(str(f.relative_to(root)))
    if not images:
        raise SystemExit(f"no images found under {root}")
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), files


def folder_digest(files, root) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        h.update(sha256_file(Path(root) / f).encode())
    return h.hexdigest()


def ferplus_soft(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FER+ votes (Nx10) -> (Nx7 distribution in FER order, valid mask)."""
    v = votes[:, :7].astype(np.float32)
    valid = (votes[:, 0] >= 0) & (v.sum(1) > 0)
    dist = np.zeros((len(votes), 7), np.float32)
    dist[:, FERPLUS_TO_FER] = np.where(v > 0, v, 0)
    s = dist.sum(1, keepdims=True)
    dist = np.divide(dist, s, out=np.zeros_like(dist), where=s > 0)
    return dist, valid


def stratified_split(labels: np.ndarray, frac: float, seed: int):
    rng = np.random.RandomState(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = round(len(idx) * frac)
        if frac > 0 and len(idx) > 1:
            n = max(1, n)
        va.append(idx[:n])
        tr.append(idx[n:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


# --------------------------------------------------------------------------------------- model
def build_model(widths=(48, 96, 192, 256), num_classes=7, dropout=0.4):
    import torch.nn as nn

    class EdgedFERNet(nn.Module):
        """VGG-style CNN: 4 stages of 2x (conv3x3-BN-ReLU), max-pool between, GAP, linear."""

        def __init__(self):
            super().__init__()
            layers, cin = [], 1
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

        def forward(self, x):
            x = self.pool(self.features(x)).flatten(1)
            return self.fc(self.drop(x))

    return EdgedFERNet()


def load_trained(path: str | Path):
    """A trained .pt (state_dict + arch) as an eval-mode network on the CPU, with its checkpoint."""
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=False)
    net = build_model(tuple(ck["arch"]["widths"]), 7, ck["arch"].get("dropout", 0.4))
    net.load_state_dict(ck["state_dict"])
    return net.eval(), ck


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


def tta_logits(net, x, mode: str, crop: int):
    """Mean logits of ``net`` over the views of a test-time mode. The exported ONNX graph
    and the validation that chooses the mode both call this, so they cannot disagree."""
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


def make_export_module(net, mode: str, crop: int):
    """Wrap the network so that the graph takes the 48x48 daemon input and applies the
    test-time mode chosen on validation (one network; the views are averaged in-graph)."""
    import torch.nn as nn

    parse_mode(mode)  # fail before export on a bad mode

    class Deploy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return tta_logits(self.net, x, mode, crop)

    return Deploy()


# -------------------------------------------------------------------------------- augmentation
def augment(xb, crop, rng_t, rot_deg=15.0, scale=(0.85, 1.15), shift_px=4.0, erase_p=0.5):
    """Batched GPU/CPU augmentation on [0,1] float Nx1x48x48 -> normalised Nx1xcropxcrop.
    Random rotation/scale/translation/flip via one affine grid_sample, brightness/contrast
    jitter, random erasing."""
    import torch
    import torch.nn.functional as nnf

    n, dev = xb.shape[0], xb.device

    def unif(lo, hi, *shape):
        return torch.rand(*(shape or (n,)), generator=rng_t, device="cpu").to(dev) * (hi - lo) + lo

    ang = unif(-rot_deg, rot_deg) * math.pi / 180
    s = unif(*scale)
    flip = (torch.rand(n, generator=rng_t) < 0.5).to(dev).float() * -2 + 1
    r = crop / SIZE / s  # output crop covers crop/SIZE of input (normalised coords), zoomed by s
    tx = unif(-shift_px, shift_px) * 2 / SIZE
    ty = unif(-shift_px, shift_px) * 2 / SIZE
    cos, sin = torch.cos(ang) * r, torch.sin(ang) * r
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )
    grid = nnf.affine_grid(theta, (n, 1, crop, crop), align_corners=False)
    x = nnf.grid_sample(xb, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # brightness / contrast jitter around the image mean
    c = unif(0.75, 1.25).view(n, 1, 1, 1)
    b = unif(-0.1, 0.1).view(n, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - m) * c + m + b).clamp_(0, 1)
    x = (x - MEAN) / STD
    # random erasing (one rectangle, area 2-20 %, aspect 0.3-3.3, filled with noise)
    area = unif(0.02, 0.2) * crop * crop
    logr = unif(math.log(0.3), math.log(3.3))
    h = (area * torch.exp(logr)).sqrt().clamp(1, crop).floor()
    w = (area / torch.exp(logr)).sqrt().clamp(1, crop).floor()
    y0 = (unif(0, 1) * (crop - h + 1)).floor()
    x0 = (unif(0, 1) * (crop - w + 1)).floor()
    on = (torch.rand(n, generator=rng_t) < erase_p).to(dev)
    ar = torch.arange(crop, device=dev).float()
    my = (ar.view(1, -1) >= y0.view(-1, 1)) & (ar.view(1, -1) < (y0 + h).view(-1, 1))
    mx = (ar.view(1, -1) >= x0.view(-1, 1)) & (ar.view(1, -1) < (x0 + w).view(-1, 1))
    mask = (my[:, :, None] & mx[:, None, :] & on.view(n, 1, 1)).unsqueeze(1)
    noise = torch.randn(x.shape, generator=rng_t).to(dev)
    return torch.where(mask, noise, x)


def camera_augment(xb, rng_t, p=0.35):
    """What a camera crop does to a face that a registered dataset face never had.

    On [0,1] float Nx1x48x48, each applied to a random share ``p`` of the batch: gamma
    (exposure), Gaussian blur (focus, motion), a trip through a lower resolution (a face
    far from the camera, upscaled by the crop), JPEG compression (RTSP/MJPEG streams), and
    Gaussian sensor noise. Per batch one blur sigma / resolution / quality keeps it cheap.
    """
    import cv2
    import torch
    import torch.nn.functional as nnf

    n, dev = xb.shape[0], xb.device

    def pick():
        return (torch.rand(n, generator=rng_t) < p).to(dev).view(n, 1, 1, 1)

    def u(lo, hi):
        return float(torch.rand(1, generator=rng_t)) * (hi - lo) + lo

    g = torch.exp(torch.rand(n, generator=rng_t) * 0.8 - 0.4).to(dev).view(n, 1, 1, 1)
    xb = torch.where(pick(), xb.clamp(1e-4, 1).pow(g), xb)
    sigma = u(0.4, 1.3)
    k = torch.arange(-2, 3, dtype=torch.float32, device=dev)
    k = torch.exp(-(k * k) / (2 * sigma * sigma))
    k = k / k.sum()
    blurred = nnf.conv2d(nnf.pad(xb, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    blurred = nnf.conv2d(nnf.pad(blurred, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
    xb = torch.where(pick(), blurred, xb)
    side = int(u(14, 36))
    low = nnf.interpolate(xb, size=(side, side), mode="area")
    low = nnf.interpolate(low, size=xb.shape[-2:], mode="bilinear", align_corners=False)
    xb = torch.where(pick(), low, xb)
    sel = pick().view(-1).nonzero().view(-1).tolist()
    if sel:
        q = int(u(25, 85))
        arr = (xb[sel, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        dec = [
            cv2.imdecode(cv2.imencode(".jpg", a_, [cv2.IMWRITE_JPEG_QUALITY, q])[1], 0)
            for a_ in arr
        ]
        xb = xb.clone()
        xb[sel, 0] = torch.from_numpy(np.stack(dec)).to(dev).float() / 255
    noise = torch.randn(xb.shape, generator=rng_t).to(dev) * u(0.01, 0.05)
    return torch.where(pick(), (xb + noise).clamp(0, 1), xb)


# ---------------------------------------------------------------------------------- training
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("data")
    src.add_argument(
        "--data", help="FER2013-layout npz to train on (images, labels[, ferplus_votes])"
    )
    src.add_argument(
        "--image-folder", help="folder with one sub-folder per canonical label (fine-tuning)"
    )
    src.add_argument(
        "--test-data", help="npz evaluated ONCE after model selection, for reporting only"
    )
    src.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="stratified share of the training data held out",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="edged_fer")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--epochs", type=int, default=70)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak LR (default 0.1 from scratch, 0.01 fine-tuning)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument(
        "--soft-targets",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mix the FER+ vote distribution into the target (needs ferplus_votes in the npz)",
    )
    p.add_argument(
        "--soft-weight",
        type=float,
        default=0.5,
        help="weight of the FER+ distribution in the target",
    )
    p.add_argument(
        "--class-balance",
        type=float,
        default=0.0,
        help="weight each class's loss by (its share)^-POWER (0 = off, 0.5 = inverse sqrt, "
        "1 = inverse frequency), for the rare classes (disgust has 1.5 %% of FER2013)",
    )
    p.add_argument(
        "--camera-aug",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="photometric augmentation that looks like camera crops: gamma, blur, "
        "low resolution, JPEG, sensor noise",
    )
    p.add_argument(
        "--select-by",
        choices=["accuracy", "mean_recall"],
        default="accuracy",
        help="validation metric for the best checkpoint and the test-time mode (mean_recall: "
        "per-class recall averaged, so rare classes count as much as common ones)",
    )
    p.add_argument("--widths", default="48,96,192,256", help="channels of the 4 stages")
    p.add_argument("--dropout", type=float, default=0.4)
    p.add_argument("--crop", type=int, default=40, help="training crop size (inputs are 48x48)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument(
        "--init-checkpoint", help="start from this .pt (state_dict + arch) instead of random init"
    )
    p.add_argument(
        "--export-from",
        help="no training: choose the test-time mode on validation for this checkpoint (a run's "
        "NAME_vN.best.pt) and export it; the run's sidecar next to it is carried over",
    )
    p.add_argument(
        "--teacher",
        help="knowledge distillation: a trained .pt (e.g. the shipped model) whose softened "
        "predictions on each augmented batch are mixed into the target",
    )
    p.add_argument("--kd-weight", type=float, default=0.5, help="weight of the teacher term")
    p.add_argument("--kd-temperature", type=float, default=2.0, help="softening temperature")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast for training (2x faster on AVX512-BF16 CPUs); export is fp32",
    )
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=0,
        help="if >0: after warm-up, adapt the planned epochs (<= --epochs) so the run fits this "
        "wall-clock budget; the plan is recorded for --replay-schedule",
    )
    p.add_argument(
        "--replay-schedule",
        help="metrics CSV of an earlier run: repeat its per-epoch schedule plan",
    )
    p.add_argument(
        "--limit", type=int, default=0, help="debug: use only the first N training images"
    )
    p.add_argument(
        "--test-modes",
        default="full,full_flip,center,center_flip,ms44-48-52,ms44-48-52_flip,"
        "ms40-44-48-52-56_flip",
        help="test-time modes compared on validation; the best is baked into the ONNX graph "
        "(full: the 48x48 input; center: the training crop; msA-B-C: the input resized to "
        "each size; _flip: plus mirrored views; logits are averaged)",
    )
    p.add_argument(
        "--mode-tolerance",
        type=float,
        default=0.002,
        help="prefer a cheaper test-time mode if within this validation accuracy of the best",
    )
    a = p.parse_args(argv)
    if not a.data and not a.image_folder:
        p.error("give --data NPZ or --image-folder DIR")
    return a


def main(argv=None):
    args = parse_args(argv)
    import torch
    import torch.nn.functional as nnf

    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.name}_v{args.version}"
    log_f = (out / f"{stem}.train.log").open("a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    log(f"args: {vars(args)}")
    log(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")

    # ---- data
    data_sha = {}
    soft = None
    face_crop = None
    if args.image_folder:
        images, labels, files = load_image_folder(args.image_folder)
        data_sha[f"image_folder:{Path(args.image_folder).name}"] = folder_digest(
            files, args.image_folder
        )
        if args.soft_targets:
            log("--soft-targets ignored for an image folder (no FER+ votes)")
            args.soft_targets = False
    else:
        d = np.load(args.data)
        images, labels = d["images"], d["labels"].astype(np.int64)
        classes = [str(c) for c in d["classes"]]
        if classes != FER_CLASSES:
            raise SystemExit(f"class order {classes} != {FER_CLASSES}")
        data_sha[Path(args.data).name] = sha256_file(args.data)
        if "crop" in d.files:  # made by tools/fer_crops.py: the daemon must cut faces so too
            face_crop = json.loads(str(d["crop"]))
            log(f"training crops made by edged's detector + crop: {face_crop}")
        if args.soft_targets:
            if "ferplus_votes" not in d.files:
                raise SystemExit("--soft-targets needs ferplus_votes in the npz")
            soft, soft_valid = ferplus_soft(d["ferplus_votes"])
    if args.limit:  # debug: seeded random subset
        sub = np.sort(np.random.RandomState(args.seed).permutation(len(images))[: args.limit])
        images, labels = images[sub], labels[sub]
        if soft is not None:
            soft, soft_valid = soft[sub], soft_valid[sub]
    tr_idx, va_idx = stratified_split(labels, args.val_fraction, args.seed)
    log(
        f"data: {len(images)} images, train {len(tr_idx)}, val {len(va_idx)}, "
        f"counts {np.bincount(labels, minlength=7).tolist()}"
    )

    x_all = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # uint8 N,1,48,48
    y_all = torch.from_numpy(labels)
    if soft is not None:
        onehot = np.eye(7, dtype=np.float32)[labels]
        w = np.where(soft_valid[:, None], args.soft_weight, 0.0).astype(np.float32)
        t_soft = torch.from_numpy((1 - w) * onehot + w * soft)
        log(
            f"soft targets: FER+ distribution weight {args.soft_weight} "
            f"on {int(soft_valid.sum())} images"
        )
    x_val = ((x_all[va_idx].float() / 255 - MEAN) / STD).to(dev)
    y_val = y_all[va_idx].to(dev)
    class_w = None
    if args.class_balance > 0:
        share = np.bincount(labels[tr_idx], minlength=7).astype(np.float64)
        share = np.maximum(share, 1) / share.sum()
        cw = share**-args.class_balance
        cw /= (cw[labels[tr_idx]]).mean()  # mean sample weight 1: the LR keeps its meaning
        class_w = torch.tensor(cw, dtype=torch.float32, device=dev)
        log(f"class-balanced loss (power {args.class_balance}): weights {np.round(cw, 2).tolist()}")

    # ---- model
    widths = tuple(int(v) for v in args.widths.split(","))
    init_meta = None
    start_from = args.export_from or args.init_checkpoint
    if start_from:
        ck = torch.load(start_from, map_location="cpu", weights_only=False)
        widths = tuple(ck["arch"]["widths"])
        args.dropout = ck["arch"].get("dropout", args.dropout)
        args.crop = ck["arch"].get("crop", args.crop)
        init_meta = {"path": str(start_from), "sha256": sha256_file(start_from)}
    net = build_model(widths, 7, args.dropout)
    if args.init_checkpoint and not args.export_from:
        net.load_state_dict(ck["state_dict"])
        log(f"initialised from {args.init_checkpoint}")
    if args.lr is None:
        args.lr = 0.01 if args.init_checkpoint else 0.1
    teacher, teacher_meta = None, None
    if args.teacher and not args.export_from:
        teacher, _ = load_trained(args.teacher)
        teacher = teacher.to(dev).to(memory_format=torch.channels_last)
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
        teacher_meta = {"path": str(args.teacher), "sha256": sha256_file(args.teacher)}
        log(
            f"distilling from {args.teacher} (weight {args.kd_weight}, "
            f"temperature {args.kd_temperature})"
        )
    net = net.to(dev).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"model widths {widths}, {n_params} parameters")
    ema = torch.optim.swa_utils.AveragedModel(
        net,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema_decay),
        use_buffers=True,
    )

    decay, no_decay = [], []
    for _n, p_ in net.named_parameters():
        (no_decay if p_.ndim <= 1 else decay).append(p_)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(tr_idx) / args.batch_size)
    epochs = 0 if args.export_from else args.epochs  # export only: the loop does nothing
    replay = {}
    if args.replay_schedule:  # per-epoch plan of an earlier run
        with Path(args.replay_schedule).open() as f:
            replay = {int(r["epoch"]): int(r["scheduled_epochs"]) for r in csv.DictReader(f)}
        epochs = replay[1]
        args.time_budget_min = 0

    def lr_at(step):
        w = args.warmup_epochs * steps_per_epoch
        if step < w:
            return args.lr * (step + 1) / w
        total = max(1, epochs * steps_per_epoch - w)
        return 0.5 * args.lr * (1 + math.cos(math.pi * min(1.0, (step - w) / total)))

    use_bf16 = args.bf16
    autocast_dev = "cuda" if dev.type == "cuda" else "cpu"

    @torch.no_grad()
    def logits_on(model, x, mode, bs=512, fast=False):
        model.eval()
        outs = []
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].contiguous(memory_format=torch.channels_last)
            with torch.autocast(autocast_dev, dtype=torch.bfloat16, enabled=fast):
                outs.append(tta_logits(model, xb, mode, args.crop))
        return torch.cat(outs)

    def selection_metric(pred, y):
        if args.select_by == "mean_recall":
            recalls = [
                (pred[y == c] == c).float().mean().item() for c in range(7) if (y == c).any()
            ]
            return float(np.mean(recalls))
        return (pred == y).float().mean().item()

    def acc(model, mode):
        # per-epoch validation for checkpoint selection runs under the training autocast
        # (bf16) to keep it cheap; the final test-time-mode choice below is fp32
        pred = logits_on(model, x_val, mode, fast=use_bf16).argmax(1)
        return selection_metric(pred, y_val)

    rng_t = torch.Generator().manual_seed(args.seed)
    metrics_path = out / f"{stem}.metrics.csv"
    mf = metrics_path.open("w", newline="")
    mw = csv.writer(mf)
    mw.writerow(
        [
            "epoch",
            "scheduled_epochs",
            "lr",
            "train_loss",
            "train_acc",
            "val_acc_full",
            "val_acc_full_flip",
            "ema_val_acc_full",
            "ema_val_acc_full_flip",
            "epoch_s",
            "elapsed_s",
        ]
    )
    best = {"acc": -1.0}
    epoch_times = []
    epoch_changes = []
    step = 0
    for epoch in range(1, 10**6):
        if epoch > epochs:
            break
        t0 = time.time()
        net.train()
        perm = tr_idx[torch.randperm(len(tr_idx), generator=rng_t).numpy()]
        tot_loss = tot_ok = tot_n = 0.0
        for i in range(0, len(perm), args.batch_size):
            bi = torch.from_numpy(perm[i : i + args.batch_size])
            if len(bi) < 2:
                continue
            xb = x_all[bi].to(dev).float().div_(255)
            if args.camera_aug:
                xb = camera_augment(xb, rng_t)
            xb = augment(xb, args.crop, rng_t).contiguous(memory_format=torch.channels_last)
            yb = y_all[bi].to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(autocast_dev, dtype=torch.bfloat16, enabled=use_bf16):
                out_ = net(xb)
            out_ = out_.float()
            if soft is not None:
                tb = t_soft[bi].to(dev)
                tb = tb * (1 - args.label_smoothing) + args.label_smoothing / 7
                per = -(tb * nnf.log_softmax(out_, 1)).sum(1)
            else:
                per = nnf.cross_entropy(
                    out_, yb, label_smoothing=args.label_smoothing, reduction="none"
                )
            loss = (per * class_w[yb]).mean() if class_w is not None else per.mean()
            if teacher is not None:
                # Hinton et al.: KL between temperature-softened distributions, scaled by T^2
                # so its gradient keeps the size of the hard-label term's
                t_ = args.kd_temperature
                with (
                    torch.no_grad(),
                    torch.autocast(autocast_dev, dtype=torch.bfloat16, enabled=use_bf16),
                ):
                    t_logits = teacher(xb).float()
                kd = nnf.kl_div(
                    nnf.log_softmax(out_ / t_, 1),
                    nnf.log_softmax(t_logits / t_, 1),
                    reduction="batchmean",
                    log_target=True,
                ) * (t_ * t_)
                loss = (1 - args.kd_weight) * loss + args.kd_weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(net)
            step += 1
            tot_loss += loss.item() * len(bi)
            tot_ok += (out_.argmax(1) == yb).sum().item()
            tot_n += len(bi)
        te = time.time() - t0
        epoch_times.append(te)
        # validation (selection metric: plain 48x48 accuracy; flip only in the last 30 %)
        late = epoch > int(epochs * 0.7) or epoch == epochs
        va_full = acc(net, "full")
        va_flip = acc(net, "full_flip") if late else float("nan")
        eva_full = eva_flip = float("nan")
        if epoch > int(epochs * 0.5) or epoch == epochs:
            eva_full = acc(ema, "full")
        elapsed = time.time() - t_start
        mw.writerow(
            [
                epoch,
                epochs,
                f"{lr_at(step - 1):.5f}",
                f"{tot_loss / tot_n:.4f}",
                f"{tot_ok / tot_n:.4f}",
                f"{va_full:.4f}",
                f"{va_flip:.4f}",
                f"{eva_full:.4f}",
                f"{eva_flip:.4f}",
                f"{te:.1f}",
                f"{elapsed:.0f}",
            ]
        )
        mf.flush()
        log(
            f"epoch {epoch}/{epochs} lr {lr_at(step - 1):.4f} loss {tot_loss / tot_n:.4f} "
            f"train_acc {tot_ok / tot_n:.4f} val full {va_full:.4f} flip {va_flip:.4f} | "
            f"ema {eva_full:.4f} {eva_flip:.4f} | {te:.0f}s (elapsed {elapsed:.0f}s)"
        )
        # checkpoints: last every epoch, best (by validation accuracy) kept separately
        ck_common = {
            "arch": {"widths": list(widths), "dropout": args.dropout, "crop": args.crop},
            "classes": FER_CLASSES,
        }
        torch.save(
            {**ck_common, "state_dict": net.state_dict(), "epoch": epoch}, out / f"{stem}.last.pt"
        )
        for tag, a_, m_ in (("raw", va_full, net), ("ema", eva_full, ema.module)):
            if a_ == a_ and a_ > best["acc"]:
                best = {"acc": a_, "epoch": epoch, "which": tag}
                torch.save(
                    {
                        **ck_common,
                        "state_dict": {k: v.detach().clone() for k, v in m_.state_dict().items()},
                        "epoch": epoch,
                        "which": tag,
                    },
                    out / f"{stem}.best.pt",
                )
                log(f"  new best val {a_:.4f} ({tag}, epoch {epoch})")
        # Fit the cosine schedule into the wall-clock budget (the machine is shared, so its
        # speed varies): after warm-up the planned number of epochs follows the measured
        # epoch time, up (only in the first half) or down. The plan of every epoch is in the
        # metrics CSV (scheduled_epochs); --replay-schedule CSV repeats it exactly.
        if replay:
            if epoch >= max(replay):  # the replayed run stopped here
                break
            epochs = replay[epoch + 1]
        elif args.time_budget_min > 0 and epoch >= max(2, args.warmup_epochs) and epoch < epochs:
            recent = epoch_times[1:][-3:] if len(epoch_times) > 1 else epoch_times
            per = float(np.median(recent)) + (time.time() - t0 - te)  # train + validation time
            left = args.time_budget_min * 60 - (time.time() - t_start) - 60
            fit = min(args.epochs, max(epoch, epoch + int(left // (per * 1.05))))
            if fit < epochs or (fit >= epochs + 2 and epoch < epochs * 0.5):
                log(f"time budget: {per:.0f}s/epoch -> epochs {epochs} changed to {fit}")
                epoch_changes.append((epoch, epochs, fit))
                epochs = fit
        if args.time_budget_min > 0 and time.time() - t_start > args.time_budget_min * 60:
            log("time budget exhausted, stopping (best-by-validation checkpoint is used)")
            break
    mf.close()
    train_wall = time.time() - t_start
    log(f"training done in {train_wall:.0f}s, {len(epoch_times)} epochs; best val {best}")

    # ---- choose the test-time mode on VALIDATION, export
    best_path = Path(args.export_from) if args.export_from else out / f"{stem}.best.pt"
    final, ck = load_trained(best_path)
    x_val_cpu, y_val_cpu = x_val.cpu(), y_val.cpu()
    mode_acc = {}
    with torch.no_grad():
        for mode in args.test_modes.split(","):
            mode_acc[mode] = selection_metric(
                logits_on(final, x_val_cpu, mode).argmax(1), y_val_cpu
            )
    best_acc = max(mode_acc.values())
    mode = min(
        (m for m, a_ in mode_acc.items() if a_ >= best_acc - args.mode_tolerance),
        key=lambda m: mode_cost(m, args.crop),
    )
    log(
        f"validation {args.select_by} by test-time mode (fp32): {mode_acc} "
        f"-> baked into ONNX: {mode}"
    )

    final_sd = {k: v.float() for k, v in final.state_dict().items()}
    pt_path = out / f"{stem}.pt"
    torch.save(
        {
            "arch": {"widths": list(widths), "dropout": args.dropout, "crop": args.crop},
            "classes": FER_CLASSES,
            "canonical": CANONICAL,
            "mode": mode,
            "state_dict": final_sd,
        },
        pt_path,
    )
    import onnxruntime as ort

    test_set = None
    if args.test_data:  # reporting only, after selection; read and hashed once
        dt = np.load(args.test_data)
        test_set = (((dt["images"].astype(np.float32) / 255 - MEAN) / STD)[:, None], dt["labels"])
        data_sha[Path(args.test_data).name] = sha256_file(args.test_data)

    def export(mode_: str, onnx_path: Path):
        """Export ``final`` with a test-time mode baked in; check it against torch; return
        its (validation accuracy, test accuracy or None) measured on the exported graph."""
        deploy = make_export_module(final, mode_, args.crop).eval()
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
        probe = x_val_cpu[:64].contiguous()
        with torch.no_grad():
            ref = deploy(probe).numpy()
        got = sess.run(["logits"], {"input": probe.numpy().astype(np.float32)})[0]
        max_diff = float(np.abs(ref - got).max())
        log(f"ONNX check {onnx_path.name}: max |torch - onnxruntime| = {max_diff:.2e}")
        if max_diff > 1e-4:
            raise SystemExit(f"ONNX output of {onnx_path} differs from torch by {max_diff}")

        def accuracy(x: np.ndarray, y: np.ndarray) -> float:
            z = np.concatenate(
                [sess.run(["logits"], {"input": x[i : i + 512]})[0] for i in range(0, len(x), 512)]
            )
            return float((z.argmax(1) == y).mean())

        val_acc = accuracy(x_val_cpu.numpy(), y_val_cpu.numpy())
        test_acc = None
        if test_set is not None:
            test_acc = accuracy(*test_set)
            log(
                f"{onnx_path.name}: test accuracy (reporting only, {len(test_set[1])} images) "
                f"{test_acc:.4f}"
            )
        return val_acc, test_acc

    onnx_path = out / f"{stem}.onnx"
    val_accuracy, test_accuracy = export(mode, onnx_path)
    # A multi-view mode costs several passes per face; the single-pass graph of the same
    # weights ships beside it for machines that need the speed more than the last point.
    fast = None
    if mode != "full":
        fast_path = out / f"{stem}_fast.onnx"
        fast_val, fast_test = export("full", fast_path)
        fast = {
            "file": fast_path.name,
            "sha256": sha256_file(fast_path),
            "test_time_mode": "full",
            "val_accuracy": fast_val,
            "test_accuracy": fast_test,
        }

    try:
        import subprocess

        git_rev = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or None
        )
    except Exception:
        git_rev = None
    side = {
        "name": args.name,
        "version": args.version,
        "input": "input",
        "output": "logits",
        "size": SIZE,
        "channels": 1,
        "mean": [MEAN],
        "std": [STD],
        "labels": FER_CLASSES,
        "canonical_labels": CANONICAL,
        "preprocessing": "BGR->GRAY (cv2.COLOR_BGR2GRAY), cv2.resize 48x48 INTER_AREA, /255, "
        "(x-0.5)/0.5",
        "sha256": sha256_file(onnx_path),
        # How the training faces were framed (edged.models.catalog.CropSpec.to_json); the catalogue
        # entry of a model trained here must use the same (tests/test_own_model.py).
        "face_crop": face_crop,
        "seed": args.seed,
        "train_config": {k: v for k, v in vars(args).items()},
        "effective_epochs": len(epoch_times),
        "scheduled_epochs": epochs,
        "epoch_changes": epoch_changes,
        "best_epoch": ck.get("epoch"),
        "best_weights": ck.get("which"),
        "test_time_mode": mode,
        "val_accuracy_by_mode": mode_acc,
        "params": n_params,
        "data_sha256": data_sha,
        "val_size": len(va_idx),
        "train_size": len(tr_idx),
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "fast_variant": fast,
        "torch_version": torch.__version__,
        "init_checkpoint": init_meta,
        "teacher": teacher_meta,
        "train_wall_s": round(train_wall, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "git_rev": git_rev,
        "python": sys.version.split()[0],
    }
    if args.export_from:
        # the weights were trained by an earlier run: its sidecar says how, this one only
        # chose the test-time mode and exported
        src_name = Path(args.export_from).name
        for suffix in (".best.pt", ".last.pt", ".pt"):
            if src_name.endswith(suffix):
                src_name = src_name[: -len(suffix)]
                break
        trained = Path(args.export_from).with_name(src_name + ".json")
        run = json.loads(trained.read_text()) if trained.is_file() else {}
        for key in (
            "seed",
            "train_config",
            "effective_epochs",
            "scheduled_epochs",
            "epoch_changes",
            "best_epoch",
            "best_weights",
            "init_checkpoint",
            "teacher",
            "train_wall_s",
            "torch_version",
            "git_rev",
        ):
            if key in run:
                side[key] = run[key]
        for name, digest in run.get("data_sha256", {}).items():
            side["data_sha256"].setdefault(name, digest)
        side["export"] = {
            "from": init_meta,
            "run_sidecar": str(trained) if run else None,
            "args": {k: v for k, v in vars(args).items()},
            "git_rev": git_rev,
            "wall_s": round(time.time() - t_start, 1),
        }
    with (out / f"{stem}.json").open("w") as f:
        json.dump(side, f, indent=2)
    log(
        f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), {pt_path}, "
        f"{out / f'{stem}.json'}"
    )
    log(f"total wall {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
