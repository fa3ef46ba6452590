"""Training data: FER2013-layout npz files and image folders, FER+ soft targets, the split,
class balance and augmentation.

Labels, input size, normalisation, the gray conversion and the face crop are the
package's (``edged.models.catalog``, ``edged.models.classification.fer``): the daemon
reads the same definitions, so a model trained here sees the pixels it will be given.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.models.catalog import CATALOG, LABEL_ALIASES, CropSpec
from edged.models.classification.fer import gray_input

_FER = CATALOG["edged_fer"]
#: FER2013's class order: the model's output columns.
FER_CLASSES: list[str] = list(_FER.labels)
#: edged's canonical label of each output column (same order as FER_CLASSES).
CANONICAL: list[str] = list(_FER.canonical_labels)
SIZE: int = _FER.input_size
MEAN: float = float(_FER.mean[0])
STD: float = float(_FER.std[0])
NUM_CLASSES = len(FER_CLASSES)
# FER+ vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
# unknown, NF
FERPLUS_TO_FER = [4, 3, 6, 5, 0, 1, 2]  # FER+ column j (j<7) -> FER class index
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass
class Dataset:
    """Training images (uint8 Nx48x48 gray) with labels, optional FER+ soft targets, the
    digests of the files read, and the framing of detector-made crops (``face_crop``).

    ``sources`` names what each file was cut from (the npz's ``source``, e.g.
    ``facial_expressions:select-fit``), so a model's sidecar says which photos it learnt
    and no evaluation can score it on them by mistake."""

    images: np.ndarray
    labels: np.ndarray
    data_sha: dict[str, str]
    soft: np.ndarray | None = None
    soft_valid: np.ndarray | None = None
    face_crop: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def subset(self, limit: int, seed: int) -> Dataset:
        """A seeded random ``limit`` images (debug runs), in file order."""
        sub = np.sort(np.random.RandomState(seed).permutation(len(self.images))[:limit])
        soft = None if self.soft is None else self.soft[sub]
        valid = None if self.soft_valid is None else self.soft_valid[sub]
        return Dataset(
            self.images[sub],
            self.labels[sub],
            self.data_sha,
            soft,
            valid,
            self.face_crop,
            self.sources,
        )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preprocess_bgr(img: np.ndarray) -> np.ndarray:
    """The daemon's preprocessing up to the float step: BGR(A)/gray uint8 -> 48x48 gray."""
    import cv2

    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return gray_input(img, SIZE)


def labelled_files(root: str | Path) -> list[tuple[Path, str]]:
    """(image path, canonical label) of every image under DIR/<label>/, in sorted order.

    The one reading of the folder layout (training, ``tools/fer_crops.py --image-folder``,
    ``tools/eval_emotion.py --image-folder``): label folders may use any of the catalogue's
    spellings (``fear``, ``fearful``, ...); an unknown folder name is an error, not a skip,
    so a typo never silently drops a class. Contempt is returned; callers whose model has
    no such class leave it out.
    """
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"not a folder: {root}")
    out: list[tuple[Path, str]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = LABEL_ALIASES.get(sub.name.lower())
        if label is None:
            raise SystemExit(
                f"unknown label folder {sub}; expected one of {CANONICAL} (or contemptuous)"
            )
        out += [(f, label) for f in sorted(sub.rglob("*")) if f.suffix.lower() in IMAGE_EXTS]
    if not out:
        raise SystemExit(f"no images found under {root}")
    return out


def load_image_folder(root: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """DIR/<label>/* -> (images uint8 Nx48x48, labels int64, files); contempt is skipped."""
    import cv2

    root = Path(root)
    images, labels, files = [], [], []
    skipped = set()
    for f, label in labelled_files(root):
        if label not in CANONICAL:
            skipped.add(label)
            continue
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            print(f"[data] unreadable, skipped: {f}")
            continue
        images.append(preprocess_bgr(img))
        labels.append(CANONICAL.index(label))
        files.append(str(f.relative_to(root)))
    for label in sorted(skipped):
        print(f"[data] ignoring {label!r} images (not one of the 7 classes of this model)")
    if not images:
        raise SystemExit(f"no images of this model's classes found under {root}")
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), files


def folder_digest(files: list[str], root: str | Path) -> str:
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


def training_crop(npz: Any) -> dict[str, Any] | None:
    """The framing of crops made by ``tools/fer_crops.py`` (edged's detector +
    ``edged.models.crops.face_crops``), checked as a :class:`CropSpec`; None for registered
    FER2013 faces. The daemon must cut faces so too (the sidecar's ``face_crop``)."""
    if "crop" not in npz.files:
        return None
    return CropSpec.from_json(json.loads(str(npz["crop"]))).to_json()


def load_npz(path: str | Path, soft_targets: bool) -> Dataset:
    """A FER2013-layout npz (class order checked against the catalogue's)."""
    d = np.load(path)
    classes = [str(c) for c in d["classes"]]
    if classes != FER_CLASSES:
        raise SystemExit(f"class order {classes} != {FER_CLASSES}")
    name = Path(path).name
    data = Dataset(d["images"], d["labels"].astype(np.int64), {name: sha256_file(path)})
    data.face_crop = training_crop(d)
    data.sources = {name: str(d["source"]) if "source" in d.files else name}
    if soft_targets:
        if "ferplus_votes" not in d.files:
            raise SystemExit("--soft-targets needs ferplus_votes in the npz")
        data.soft, data.soft_valid = ferplus_soft(d["ferplus_votes"])
    return data


def joined(base: Dataset, extras: list[Dataset]) -> tuple[Dataset, np.ndarray]:
    """``base`` followed by ``extras`` (one dataset) and the indices of the extras' images.

    Extras must be framed like ``base`` (same ``face_crop``): a model must not learn two
    framings of the face when the daemon cuts one. Images without FER+ votes get one-hot
    targets (``soft_valid`` False)."""
    images, labels, shas = [base.images], [base.labels], dict(base.data_sha)
    sources = dict(base.sources)
    softs = [base.soft] if base.soft is not None else None
    valids = [base.soft_valid] if base.soft_valid is not None else None
    for ex in extras:
        if ex.face_crop != base.face_crop:
            raise SystemExit(
                f"--extra-data {list(ex.data_sha)} is framed {ex.face_crop}, --data "
                f"{base.face_crop}: cut both with the same crop (tools/fer_crops.py --for)"
            )
        images.append(ex.images)
        labels.append(ex.labels)
        shas.update(ex.data_sha)
        sources.update(ex.sources)
        if softs is not None and valids is not None:
            n = len(ex.images)
            softs.append(ex.soft if ex.soft is not None else np.zeros((n, 7), np.float32))
            valids.append(ex.soft_valid if ex.soft_valid is not None else np.zeros(n, bool))
    n_base = len(base.images)
    out = Dataset(
        np.concatenate(images),
        np.concatenate(labels),
        shas,
        None if softs is None else np.concatenate(softs),
        None if valids is None else np.concatenate(valids),
        base.face_crop,
        sources,
    )
    return out, np.arange(n_base, len(out.images))


def load_folder(root: str | Path) -> Dataset:
    images, labels, files = load_image_folder(root)
    name = f"image_folder:{Path(root).name}"
    return Dataset(images, labels, {name: folder_digest(files, root)}, sources={name: name})


def normalised(images: np.ndarray) -> np.ndarray:
    """uint8 Nx48x48 -> float32 Nx1x48x48, the classifier's /255 then (x - mean) / std."""
    return ((images.astype(np.float32) / 255 - MEAN) / STD)[:, None]


def stratified_split(labels: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def class_weights(train_labels: np.ndarray, power: float, classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-class loss weight (class share)^-power, scaled so the mean sample weight is 1
    (the LR keeps its meaning); the rare classes (disgust: 1.5 % of FER2013) count more."""
    share = np.bincount(train_labels, minlength=classes).astype(np.float64)
    share = np.maximum(share, 1) / share.sum()
    cw: np.ndarray = share**-power
    cw /= (cw[train_labels]).mean()
    return cw


# -------------------------------------------------------------------------------- augmentation
def augment(
    xb: Any,
    crop: int,
    rng_t: Any,
    rot_deg: float = 15.0,
    scale: tuple[float, float] = (0.85, 1.15),
    shift_px: float = 4.0,
    erase_p: float = 0.5,
) -> Any:
    """Batched GPU/CPU augmentation on [0,1] float Nx1x48x48 -> normalised Nx1xcropxcrop.
    Random rotation/scale/translation/flip via one affine grid_sample, brightness/contrast
    jitter, random erasing."""
    import torch
    import torch.nn.functional as nnf

    n, dev = xb.shape[0], xb.device

    def unif(lo: float, hi: float) -> Any:
        return torch.rand(n, generator=rng_t, device="cpu").to(dev) * (hi - lo) + lo

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
    grid = nnf.affine_grid(theta, [n, 1, crop, crop], align_corners=False)
    x = nnf.grid_sample(xb, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # brightness / contrast jitter around the image mean
    c = unif(0.75, 1.25).view(n, 1, 1, 1)
    b = unif(-0.1, 0.1).view(n, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - m) * c + m + b).clamp_(0, 1)
    x = (x - MEAN) / STD
    return _erase(x, crop, rng_t, erase_p, unif)


def _erase(x: Any, crop: int, rng_t: Any, erase_p: float, unif: Any) -> Any:
    """Random erasing: one rectangle, area 2-20 %, aspect 0.3-3.3, filled with noise."""
    import torch

    n, dev = x.shape[0], x.device
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


def camera_augment(xb: Any, rng_t: Any, p: float = 0.35) -> Any:
    """What a camera crop does to a face that a registered dataset face never had.

    On [0,1] float Nx1x48x48, each applied to a random share ``p`` of the batch: gamma
    (exposure), Gaussian blur (focus, motion), a trip through a lower resolution (a face
    far from the camera, upscaled by the crop), JPEG compression (RTSP/MJPEG streams), and
    Gaussian sensor noise. Per batch one blur sigma / resolution / quality keeps it cheap.
    """
    import torch
    import torch.nn.functional as nnf

    n, dev = xb.shape[0], xb.device

    def pick() -> Any:
        return (torch.rand(n, generator=rng_t) < p).to(dev).view(n, 1, 1, 1)

    def u(lo: float, hi: float) -> float:
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
        xb = _jpeg(xb, sel, int(u(25, 85)))
    noise = torch.randn(xb.shape, generator=rng_t).to(dev) * u(0.01, 0.05)
    return torch.where(pick(), (xb + noise).clamp(0, 1), xb)


def _jpeg(xb: Any, sel: list[int], quality: int) -> Any:
    """The images ``sel`` of the batch through a JPEG encode/decode at ``quality``."""
    import cv2
    import torch

    arr = (xb[sel, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    dec = []
    for a_ in arr:
        img = cv2.imdecode(cv2.imencode(".jpg", a_, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)
        assert img is not None  # a buffer cv2 just encoded decodes
        dec.append(img)
    xb = xb.clone()
    xb[sel, 0] = torch.from_numpy(np.stack(dec)).to(xb.device).float() / 255
    return xb
