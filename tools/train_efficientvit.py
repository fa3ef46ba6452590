#!/usr/bin/env python3
"""Train EfficientViT-M5 (tools/efficientvit_m5.py) for emotions on FER2013; export the pair.

The seed's ``sota_phase3`` loads ``efficientvit/efficientvit_m5_backbone.onnx`` (``input``
Nx3xSxS → ``features`` Nx384) and ``efficientvit/efficientvit_m5_emotion_head.onnx``
(``features`` → ``logits`` Nx8, HSEmotion's 8-class order). No pretrained weights exist for
it here, so it is trained from scratch on FER2013's training split.

Data: an npz in the FER2013 layout (``images`` uint8 Nx48x48 gray, ``labels`` in FER's
7-class order angry, disgust, fear, happy, neutral, sad, surprise, optional
``ferplus_votes``): ``../shared/datasets/fer2013_train.npz`` or a re-cut made by
``tools/fer_crops.py`` (its ``crop`` framing is recorded in the sidecar). Each face is
resized to ``--input-size`` and repeated to 3 channels (edged feeds the model RGB crops;
a gray face is R = G = B), scaled to [0, 1] and normalised with ImageNet mean/std, as
edged's EfficientViT classifier does.

Labels: FER's 7 classes go to their HSEmotion-8 columns (angry→Anger, disgust→Disgust,
fear→Fear, happy→Happiness, neutral→Neutral, sad→Sadness, surprise→Surprise). **Contempt
has no training example**: its logit only ever receives negative gradient, so the model
will practically never predict it. Label smoothing and the FER+ soft targets spread over
the 7 trained classes only (contempt's target stays 0).

Training: AdamW, linear warm-up then cosine, augmentation (mirror, rotation, scale, shift,
brightness/contrast; ``--camera-aug`` adds train_emotion's camera look), optional FER+
soft targets (``--soft-targets``) and class-balanced loss (``--class-balance``), a seeded
stratified 10 % validation split, the best checkpoint by validation mean per-class recall,
and ``--time-budget-min`` to fit a wall-clock budget. The helpers are train_emotion's
(``ferplus_soft``, ``stratified_split``, ``camera_augment``, ``sha256_file``).

Outputs in ``--out`` (itself a models directory in the seed layout)::

    efficientvit/efficientvit_m5_backbone.onnx, efficientvit/efficientvit_m5_emotion_head.onnx
    NAME.json (sidecar), NAME.best.pt, NAME.last.pt, NAME.metrics.csv, NAME.train.log

Typical use
  # GPU (used whenever torch sees one): 224 px, the seed's size
  python tools/train_efficientvit.py --data ../shared/datasets/fer2013_train.npz \
      --out runs/evit --epochs 60 --soft-targets --class-balance 0.5
  # smoke run
  python tools/train_efficientvit.py --data ../shared/datasets/fer2013_train.npz \
      --limit 600 --epochs 1 --input-size 64 --out /tmp/evit_smoke --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import efficientvit_m5 as evit  # noqa: E402
from train_emotion import (  # noqa: E402
    FER_CLASSES,
    camera_augment,
    ferplus_soft,
    sha256_file,
    stratified_split,
)

#: FER2013 class index (angry, disgust, fear, happy, neutral, sad, surprise) -> column of the
#: HSEmotion-8 head (Anger, Contempt, Disgust, Fear, Happiness, Neutral, Sadness, Surprise).
FER_TO_HEAD = [0, 2, 3, 4, 5, 6, 7]
CONTEMPT = 1
NUM_CLASSES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="FER2013-layout npz (training split only)")
    p.add_argument("--out", required=True, help="output folder (becomes a models directory)")
    p.add_argument("--name", default="efficientvit_m5_emotion", help="stem of sidecar/checkpoints")
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="side of the model input (default 224 on a GPU, 112 on CPU; any multiple of 16)",
    )
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5, help="end of the cosine")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.05, help="stochastic depth per block")
    p.add_argument("--dropout", type=float, default=0.2, help="before the head (training only)")
    p.add_argument("--rot-deg", type=float, default=10.0, help="max rotation of augmentation")
    p.add_argument("--scale-jitter", type=float, default=0.1, help="zoom in 1 +- this")
    p.add_argument("--shift", type=float, default=0.06, help="max shift, share of the side")
    p.add_argument(
        "--soft-targets",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mix the FER+ vote distribution into the target (needs ferplus_votes)",
    )
    p.add_argument("--soft-weight", type=float, default=0.5)
    p.add_argument(
        "--class-balance",
        type=float,
        default=0.0,
        help="weight each class's loss by (its share)^-POWER as train_emotion does (0 = off)",
    )
    p.add_argument(
        "--camera-aug",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train_emotion's camera augmentation (gamma, blur, low resolution, JPEG, noise)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=0,
        help="if >0: after warm-up, shrink (or, in the first half, grow up to --epochs) the "
        "planned epochs so the run fits this wall-clock budget",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast (default: on a GPU only); export is fp32",
    )
    p.add_argument("--limit", type=int, default=0, help="debug: a seeded random N images")
    p.add_argument("--seed", type=int, default=20261202)
    return p.parse_args(argv)


def augment(x: Any, size: int, gen: Any, rot_deg: float, scale_jitter: float, shift: float) -> Any:
    """[0,1] Nx1x48x48 → augmented Nx1xSxS in one affine ``grid_sample`` (the resize is the
    same bilinear resampling validation uses), then brightness/contrast jitter.

    Mirror with p = 0.5, rotation in ±rot_deg, zoom 1 ± scale_jitter, shift ± shift of the
    side; borders replicated (FER faces fill the frame).
    """
    import torch
    from torch.nn import functional as nnf

    n, dev = x.shape[0], x.device

    def unif(lo: float, hi: float) -> Any:
        return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(dev)

    ang = unif(-rot_deg, rot_deg) * math.pi / 180
    inv = 1 / unif(1 - scale_jitter, 1 + scale_jitter)
    flip = ((torch.rand(n, generator=gen) < 0.5).float() * -2 + 1).to(dev)
    tx, ty = unif(-2 * shift, 2 * shift), unif(-2 * shift, 2 * shift)
    cos, sin = torch.cos(ang) * inv, torch.sin(ang) * inv
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )
    grid = nnf.affine_grid(theta, [n, 1, size, size], align_corners=False)
    x = nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = unif(0.7, 1.3).view(n, 1, 1, 1)
    b = unif(-0.12, 0.12).view(n, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    return ((x - m) * c + m + b).clamp_(0, 1)


def to_input(x: Any, mean: Any, std: Any) -> Any:
    """[0,1] Nx1xSxS gray → Nx3xSxS ImageNet-normalised (R = G = B)."""
    return (x.expand(-1, 3, -1, -1) - mean) / std


def resize(x: Any, size: int) -> Any:
    """[0,1] Nx1x48x48 → Nx1xSxS, bilinear (what ``augment`` does without jitter)."""
    from torch.nn import functional as nnf

    if x.shape[-1] == size:
        return x
    return nnf.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class recall (head columns, FER classes present) and their mean.

    ``y`` is in head columns; predicting contempt is an error like any wrong class.
    """
    recall = {
        evit.LABELS_8[c]: float((pred[y == c] == c).mean()) for c in FER_TO_HEAD if (y == c).any()
    }
    return {
        "accuracy": float((pred == y).mean()),
        "mean_recall": float(np.mean(list(recall.values()))),
        "recall": recall,
        "predicted_contempt": int((pred == CONTEMPT).sum()),
        "n": len(y),
    }


def git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=TOOLS, check=False
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from torch.nn import functional as nnf

    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    size = args.input_size or (224 if cuda else 112)
    use_bf16 = cuda if args.bf16 is None else args.bf16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name
    log_f = (out / f"{stem}.train.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    log(f"args: {vars(args)}")
    log(
        f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, "
        f"input {size}, bf16 {use_bf16}"
    )

    # ---- data
    d = np.load(args.data)
    classes = [str(c) for c in d["classes"]]
    if classes != FER_CLASSES:
        raise SystemExit(f"class order {classes} != {FER_CLASSES}")
    images, labels = d["images"], d["labels"].astype(np.int64)
    data_sha = {Path(args.data).name: sha256_file(args.data)}
    face_crop = json.loads(str(d["crop"])) if "crop" in d.files else None
    if face_crop:
        log(f"training crops made by edged's detector + crop: {face_crop}")
    soft = soft_valid = None
    if args.soft_targets:
        if "ferplus_votes" not in d.files:
            raise SystemExit("--soft-targets needs ferplus_votes in the npz")
        soft, soft_valid = ferplus_soft(d["ferplus_votes"])
    if args.limit:
        sub = np.sort(np.random.RandomState(args.seed).permutation(len(images))[: args.limit])
        images, labels = images[sub], labels[sub]
        if soft is not None and soft_valid is not None:
            soft, soft_valid = soft[sub], soft_valid[sub]
    tr_idx, va_idx = stratified_split(labels, args.val_fraction, args.seed)
    log(
        f"data: {len(images)} images, train {len(tr_idx)}, val {len(va_idx)}, FER counts "
        f"{np.bincount(labels, minlength=7).tolist()}; contempt (head column 1) has no examples"
    )

    # targets: 8-column distributions; smoothing (and FER+ votes) over the 7 trained columns
    onehot7 = np.eye(7, dtype=np.float32)[labels]
    if soft is not None and soft_valid is not None:
        w = np.where(soft_valid[:, None], args.soft_weight, 0.0).astype(np.float32)
        onehot7 = (1 - w) * onehot7 + w * soft
        log(f"soft targets: FER+ weight {args.soft_weight} on {int(soft_valid.sum())} images")
    t7 = onehot7 * (1 - args.label_smoothing) + args.label_smoothing / 7
    target = np.zeros((len(labels), NUM_CLASSES), np.float32)
    target[:, FER_TO_HEAD] = t7
    head_labels = np.asarray(FER_TO_HEAD)[labels]

    x_all = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(dev)  # uint8
    t_all = torch.from_numpy(target).to(dev)
    y_all = torch.from_numpy(head_labels).to(dev)
    mean = torch.tensor(evit.MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(evit.STD, device=dev).view(1, 3, 1, 1)
    class_w = None
    if args.class_balance > 0:  # the formula of train_emotion --class-balance
        share = np.bincount(labels[tr_idx], minlength=7).astype(np.float64)
        share = np.maximum(share, 1) / share.sum()
        cw = share**-args.class_balance
        cw /= cw[labels[tr_idx]].mean()  # mean sample weight 1: the LR keeps its meaning
        cw8 = np.ones(NUM_CLASSES)
        cw8[FER_TO_HEAD] = cw
        class_w = torch.tensor(cw8, dtype=torch.float32, device=dev)
        log(f"class-balanced loss (power {args.class_balance}): FER weights {np.round(cw, 2)}")

    # ---- model
    model = evit.build(NUM_CLASSES, size, args.drop_path, args.dropout).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"EfficientViT-M5: {n_params} parameters ({evit.fused_param_count(model.backbone)} in "
        f"the exported backbone), windows {model.backbone.window_sizes()}"
    )
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for n_, p_ in model.named_parameters():
        (no_decay if p_.ndim <= 1 or "attention_biases" in n_ else decay).append(p_)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    steps_per_epoch = max(1, len(tr_idx) // args.batch_size)  # last partial batch dropped
    epochs = args.epochs

    def lr_at(step: int) -> float:
        warm = args.warmup_epochs * steps_per_epoch
        if step < warm:
            return args.lr * (step + 1) / warm
        total = max(1, epochs * steps_per_epoch - warm)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / total)))
        return args.min_lr + (args.lr - args.min_lr) * cos

    autocast_dev = "cuda" if cuda else "cpu"

    @torch.no_grad()
    def predict(m: torch.nn.Module, idx: np.ndarray, fast: bool) -> np.ndarray:
        m.eval()
        preds = []
        for i in range(0, len(idx), 256):
            xb = resize(x_all[idx[i : i + 256]].float().div_(255), size)
            with torch.autocast(autocast_dev, dtype=torch.bfloat16, enabled=fast):
                preds.append(m(to_input(xb, mean, std)).float().argmax(1).cpu())
        return torch.cat(preds).numpy()

    y_val = head_labels[va_idx]
    gen = torch.Generator().manual_seed(args.seed)
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
            "val_acc",
            "val_mean_recall",
            "epoch_s",
            "elapsed_s",
        ]
    )
    best: dict[str, Any] = {"mean_recall": -1.0}
    epoch_times: list[float] = []
    epoch_changes: list[tuple[int, int, int]] = []
    step = 0
    epoch = 0
    while epoch < epochs:
        epoch += 1
        t0 = time.time()
        model.train()
        perm = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
        tot_loss = tot_ok = tot_n = 0.0
        for i in range(0, steps_per_epoch * args.batch_size, args.batch_size):
            bi = torch.from_numpy(perm[i : i + args.batch_size]).to(dev)
            if len(bi) < 2:  # BatchNorm needs two samples (only with --limit tiny)
                continue
            xb = x_all[bi].float().div_(255)
            if args.camera_aug:
                xb = camera_augment(xb, gen)
            xb = augment(xb, size, gen, args.rot_deg, args.scale_jitter, args.shift)
            xb = to_input(xb, mean, std)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(autocast_dev, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(xb)
            logits = logits.float()
            per = -(t_all[bi] * nnf.log_softmax(logits, 1)).sum(1)
            yb = y_all[bi]
            loss = (per * class_w[yb]).mean() if class_w is not None else per.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot_loss += loss.item() * len(bi)
            tot_ok += (logits.argmax(1) == yb).sum().item()
            tot_n += len(bi)
        te = time.time() - t0
        epoch_times.append(te)
        val = metrics(predict(model, va_idx, use_bf16), y_val)
        elapsed = time.time() - t_start
        mw.writerow(
            [
                epoch,
                epochs,
                f"{lr_at(step - 1):.6f}",
                f"{tot_loss / max(tot_n, 1):.4f}",
                f"{tot_ok / max(tot_n, 1):.4f}",
                f"{val['accuracy']:.4f}",
                f"{val['mean_recall']:.4f}",
                f"{te:.1f}",
                f"{elapsed:.0f}",
            ]
        )
        mf.flush()
        log(
            f"epoch {epoch}/{epochs} lr {lr_at(step - 1):.5f} loss {tot_loss / max(tot_n, 1):.4f}"
            f" train_acc {tot_ok / max(tot_n, 1):.4f} val acc {val['accuracy']:.4f} "
            f"mean recall {val['mean_recall']:.4f} | {te:.0f}s (elapsed {elapsed:.0f}s)"
        )
        ck = {"config": model.config, "state_dict": model.state_dict(), "epoch": epoch}
        torch.save(ck, out / f"{stem}.last.pt")
        if val["mean_recall"] > best["mean_recall"]:
            best = {**val, "epoch": epoch}
            torch.save(ck, out / f"{stem}.best.pt")
            log(f"  new best val mean recall {val['mean_recall']:.4f} (epoch {epoch})")
        # fit the cosine into the wall-clock budget (as train_emotion does): after warm-up,
        # the planned epochs follow the measured epoch time (+ validation), down any time,
        # up only in the first half so the schedule does not jump late
        if args.time_budget_min > 0 and epoch >= max(2, args.warmup_epochs) and epoch < epochs:
            recent = epoch_times[1:][-3:] if len(epoch_times) > 1 else epoch_times
            per_epoch = float(np.median(recent)) + (time.time() - t0 - te)
            left = args.time_budget_min * 60 - (time.time() - t_start) - 90  # export margin
            fit = min(args.epochs, max(epoch, epoch + int(left // (per_epoch * 1.05))))
            if fit < epochs or (fit >= epochs + 2 and epoch < epochs * 0.5):
                log(f"time budget: {per_epoch:.0f}s/epoch -> epochs {epochs} changed to {fit}")
                epoch_changes.append((epoch, epochs, fit))
                epochs = fit
        if args.time_budget_min > 0 and time.time() - t_start > args.time_budget_min * 60:
            log("time budget exhausted, stopping (the best-by-validation checkpoint is used)")
            break
    mf.close()
    train_wall = time.time() - t_start
    log(f"training done in {train_wall:.0f}s, {len(epoch_times)} epochs; best {best}")

    # ---- export the best checkpoint, measured again in fp32
    ck = torch.load(out / f"{stem}.best.pt", map_location=dev, weights_only=False)
    model.load_state_dict(ck["state_dict"])
    final_val = metrics(predict(model, va_idx, False), y_val)
    log(f"best checkpoint (epoch {ck['epoch']}) on validation, fp32: {final_val}")
    result = evit.export(model, out, size)
    log(f"ONNX check |torch - onnxruntime| max: {result['max_abs_diff']}")
    files = {
        key: {"file": str(result[key].relative_to(out)), "sha256": sha256_file(result[key])}
        for key in ("backbone", "head")
    }
    side = {
        "model": "efficientvit_m5",
        "files": files,
        "input_size": size,
        "input": "input",
        "features": "features",
        "output": "logits",
        "color": "rgb",
        "mean": list(evit.MEAN),
        "std": list(evit.STD),
        "labels": list(evit.LABELS_8),
        "fer_to_label": {
            c: evit.LABELS_8[j] for c, j in zip(FER_CLASSES, FER_TO_HEAD, strict=True)
        },
        "untrained_labels": ["Contempt"],
        "preprocessing": "crop -> RGB -> resize SxS -> /255 -> (x - mean) / std; trained on "
        "48x48 gray faces upsampled bilinearly, R = G = B",
        "face_crop": face_crop,
        "catalog_input_size_note": (
            None
            if size == 224
            else f"edged.models.catalog 'efficientvit_m5' fixes 224; this export needs input_size="
            f"{size} and inputs ((None, 3, {size}, {size}),), ((None, 384),)"
        ),
        "val_metrics": final_val,
        "best_epoch": ck["epoch"],
        "onnx_max_abs_diff": result["max_abs_diff"],
        "params": n_params,
        "params_exported_backbone": evit.fused_param_count(model.backbone),
        "window_sizes": model.backbone.window_sizes(),
        "train_config": vars(args) | {"input_size": size, "bf16": use_bf16, "device": str(dev)},
        "effective_epochs": len(epoch_times),
        "scheduled_epochs": epochs,
        "epoch_changes": epoch_changes,
        "data_sha256": data_sha,
        "train_size": len(tr_idx),
        "val_size": len(va_idx),
        "train_wall_s": round(train_wall, 1),
        "wall_s": round(time.time() - t_start, 1),
        "git_rev": git_rev(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }
    side_path = out / f"{stem}.json"
    side_path.write_text(json.dumps(side, indent=2))
    log(f"wrote {result['backbone']}, {result['head']}, {side_path}")
    log(f"total wall {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
