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
and ``--time-budget-min`` to fit a wall-clock budget (warm-up included). Data, split, class
weights, camera augmentation, LR schedule, budget and epoch loop are ``edged_train``'s, the
package behind ``tools/train_emotion.py``.

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
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
for _path in (TOOLS, TOOLS.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import efficientvit_m5 as evit  # noqa: E402

from edged_train.data import (  # noqa: E402
    FER_CLASSES,
    Dataset,
    camera_augment,
    class_weights,
    load_npz,
    stratified_split,
)
from edged_train.data import sha256_file as sha256_file  # noqa: E402
from edged_train.loop import Budget, MetricsCsv, Schedule, run_epochs  # noqa: E402
from edged_train.sidecar import git_rev  # noqa: E402

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


def targets(args: argparse.Namespace, data: Dataset, log: Any) -> np.ndarray:
    """8-column target distributions; smoothing (and FER+ votes) over the 7 trained columns
    (contempt's target stays 0)."""
    onehot7 = np.eye(7, dtype=np.float32)[data.labels]
    if data.soft is not None and data.soft_valid is not None:
        w = np.where(data.soft_valid[:, None], args.soft_weight, 0.0).astype(np.float32)
        onehot7 = (1 - w) * onehot7 + w * data.soft
        log(f"soft targets: FER+ weight {args.soft_weight} on {int(data.soft_valid.sum())} images")
    t7 = onehot7 * (1 - args.label_smoothing) + args.label_smoothing / 7
    target = np.zeros((len(data.labels), NUM_CLASSES), np.float32)
    target[:, FER_TO_HEAD] = t7
    return target


def head_class_weights(train_labels: np.ndarray, power: float) -> np.ndarray:
    """edged_train's class weights (train_emotion --class-balance) on the head's columns;
    contempt, never trained, keeps weight 1."""
    cw8 = np.ones(NUM_CLASSES)
    cw8[FER_TO_HEAD] = class_weights(train_labels, power)
    return cw8


class EvitTrainer:
    """One run's state: data tensors on the device, model, optimiser, schedule, best."""

    def __init__(self, args: argparse.Namespace, run: dict[str, Any], data: Dataset) -> None:
        import torch

        self.args, self.log, dev = args, run["log"], run["dev"]
        self.dev, self.size, self.use_bf16 = dev, run["size"], run["bf16"]
        self.autocast_dev = "cuda" if run["cuda"] else "cpu"
        self.tr_idx, self.va_idx = stratified_split(data.labels, args.val_fraction, args.seed)
        self.log(
            f"data: {len(data.images)} images, train {len(self.tr_idx)}, val {len(self.va_idx)},"
            f" FER counts {np.bincount(data.labels, minlength=7).tolist()}; contempt (head "
            "column 1) has no examples"
        )
        head_labels = np.asarray(FER_TO_HEAD)[data.labels]
        self.x_all = torch.from_numpy(np.ascontiguousarray(data.images)).unsqueeze(1).to(dev)
        self.t_all = torch.from_numpy(targets(args, data, self.log)).to(dev)
        self.y_all = torch.from_numpy(head_labels).to(dev)
        self.y_val = head_labels[self.va_idx]
        self.mean = torch.tensor(evit.MEAN, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(evit.STD, device=dev).view(1, 3, 1, 1)
        self.class_w = None
        if args.class_balance > 0:
            cw8 = head_class_weights(data.labels[self.tr_idx], args.class_balance)
            self.class_w = torch.tensor(cw8, dtype=torch.float32, device=dev)
            self.log(
                f"class-balanced loss (power {args.class_balance}): FER weights "
                f"{np.round(cw8[FER_TO_HEAD], 2)}"
            )
        self.model = evit.build(NUM_CLASSES, self.size, args.drop_path, args.dropout).to(dev)
        self.opt = self._optimizer()
        steps = max(1, len(self.tr_idx) // args.batch_size)  # last partial batch dropped
        self.schedule = Schedule(args.lr, args.warmup_epochs, steps, args.epochs, args.min_lr)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.best: dict[str, Any] = {"mean_recall": -1.0}

    def _optimizer(self) -> Any:
        import torch

        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for n_, p_ in self.model.named_parameters():
            (no_decay if p_.ndim <= 1 or "attention_biases" in n_ else decay).append(p_)
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.args.lr,
            betas=(0.9, 0.999),
        )

    def predict(self, idx: np.ndarray, fast: bool) -> np.ndarray:
        import torch

        with torch.no_grad():
            self.model.eval()
            preds = []
            for i in range(0, len(idx), 256):
                xb = resize(self.x_all[idx[i : i + 256]].float().div_(255), self.size)
                with torch.autocast(self.autocast_dev, dtype=torch.bfloat16, enabled=fast):
                    z = self.model(to_input(xb, self.mean, self.std))
                preds.append(z.float().argmax(1).cpu())
            return torch.cat(preds).numpy()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        import torch
        from torch.nn import functional as nnf

        a, bs = self.args, self.args.batch_size
        self.model.train()
        perm = self.tr_idx[torch.randperm(len(self.tr_idx), generator=self.gen).numpy()]
        tot_loss = tot_ok = tot_n = 0.0
        for i in range(0, self.schedule.steps_per_epoch * bs, bs):
            bi = torch.from_numpy(perm[i : i + bs]).to(self.dev)
            if len(bi) < 2:  # BatchNorm needs two samples (only with --limit tiny)
                continue
            xb = self.x_all[bi].float().div_(255)
            if a.camera_aug:
                xb = camera_augment(xb, self.gen)
            xb = augment(xb, self.size, self.gen, a.rot_deg, a.scale_jitter, a.shift)
            xb = to_input(xb, self.mean, self.std)
            for g in self.opt.param_groups:
                g["lr"] = self.schedule.lr_at(self.step)
            with torch.autocast(self.autocast_dev, dtype=torch.bfloat16, enabled=self.use_bf16):
                logits = self.model(xb)
            logits = logits.float()
            per = -(self.t_all[bi] * nnf.log_softmax(logits, 1)).sum(1)
            yb = self.y_all[bi]
            loss = (per * self.class_w[yb]).mean() if self.class_w is not None else per.mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            tot_loss += loss.item() * len(bi)
            tot_ok += (logits.argmax(1) == yb).sum().item()
            tot_n += len(bi)
        return tot_loss / max(tot_n, 1), tot_ok / max(tot_n, 1)

    def end_epoch(self, epoch: int, stats: tuple[float, float], te: float) -> None:
        """Validation by mean per-class recall, the CSV row, checkpoints (last, best)."""
        import torch

        val = metrics(self.predict(self.va_idx, self.use_bf16), self.y_val)
        elapsed = time.time() - self.t_start
        lr, (loss, acc) = self.schedule.lr_at(self.step - 1), stats
        self.csv.row(
            [
                epoch,
                self.schedule.epochs,
                f"{lr:.6f}",
                f"{loss:.4f}",
                f"{acc:.4f}",
                f"{val['accuracy']:.4f}",
                f"{val['mean_recall']:.4f}",
                f"{te:.1f}",
                f"{elapsed:.0f}",
            ]
        )
        self.log(
            f"epoch {epoch}/{self.schedule.epochs} lr {lr:.5f} loss {loss:.4f}"
            f" train_acc {acc:.4f} val acc {val['accuracy']:.4f} "
            f"mean recall {val['mean_recall']:.4f} | {te:.0f}s (elapsed {elapsed:.0f}s)"
        )
        ck = {"config": self.model.config, "state_dict": self.model.state_dict(), "epoch": epoch}
        torch.save(ck, self.out / f"{self.stem}.last.pt")
        if val["mean_recall"] > self.best["mean_recall"]:
            self.best = {**val, "epoch": epoch}
            torch.save(ck, self.out / f"{self.stem}.best.pt")
            self.log(f"  new best val mean recall {val['mean_recall']:.4f} (epoch {epoch})")

    def fit(self, out: Path, stem: str, t_start: float) -> tuple[list[float], Budget]:
        """The shared epoch loop and budget (90 s kept for the export)."""
        a = self.args
        self.out, self.stem, self.t_start = out, stem, t_start
        budget = Budget(a.time_budget_min, a.epochs, a.warmup_epochs, 90, t_start)
        self.csv = MetricsCsv(out / f"{stem}.metrics.csv", CSV_HEADER)
        try:
            times = run_epochs(self.schedule, self.train_epoch, self.end_epoch, budget, self.log)
        finally:
            self.csv.close()
        return times, budget


CSV_HEADER = [
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


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Seeds, threads, device, input size, output folder and the run's log."""
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_f = (out / f"{args.name}.train.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    run = {
        "cuda": cuda,
        "dev": torch.device("cuda" if cuda else "cpu"),
        "size": args.input_size or (224 if cuda else 112),
        "bf16": cuda if args.bf16 is None else args.bf16,
        "out": out,
        "log": log,
    }
    log(f"args: {vars(args)}")
    log(
        f"torch {torch.__version__}, device {run['dev']}, threads {torch.get_num_threads()}, "
        f"input {run['size']}, bf16 {run['bf16']}"
    )
    return run


def sidecar(
    args: argparse.Namespace, run: dict[str, Any], tr: EvitTrainer, result: dict[str, Any]
) -> dict[str, Any]:
    """The pair's sidecar: files, contract, validation figures, plan and provenance."""
    import torch

    out, size, model = run["out"], run["size"], tr.model
    files = {
        key: {"file": str(result[key].relative_to(out)), "sha256": sha256_file(result[key])}
        for key in ("backbone", "head")
    }
    return {
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
        "face_crop": run["face_crop"],
        "catalog_input_size_note": (
            None
            if size == 224
            else f"edged.models.catalog 'efficientvit_m5' fixes 224; this export needs input_size="
            f"{size} and inputs ((None, 3, {size}, {size}),), ((None, 384),)"
        ),
        **run["report"],
        "onnx_max_abs_diff": result["max_abs_diff"],
        "params": sum(p.numel() for p in model.parameters()),
        "params_exported_backbone": evit.fused_param_count(model.backbone),
        "window_sizes": model.backbone.window_sizes(),
        "train_config": vars(args)
        | {"input_size": size, "bf16": run["bf16"], "device": str(run["dev"])},
        "effective_epochs": len(run["epoch_times"]),
        "scheduled_epochs": tr.schedule.epochs,
        "epoch_changes": run["budget"].changes,
        "data_sha256": run["data_sha"],
        "learnt_from": run["learnt_from"],
        "train_size": len(tr.tr_idx),
        "val_size": len(tr.va_idx),
        "train_wall_s": round(run["train_wall"], 1),
        "wall_s": round(time.time() - run["t_start"], 1),
        "git_rev": git_rev(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if run["cuda"] else None,
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    t_start = time.time()
    run = start(args)
    log, out, stem = run["log"], run["out"], args.name
    data = load_npz(args.data, args.soft_targets)
    if data.face_crop:
        log(f"training crops made by edged's detector + crop: {data.face_crop}")
    if args.limit:
        data = data.subset(args.limit, args.seed)
    tr = EvitTrainer(args, run, data)
    n_params = sum(p.numel() for p in tr.model.parameters())
    log(
        f"EfficientViT-M5: {n_params} parameters ({evit.fused_param_count(tr.model.backbone)} "
        f"in the exported backbone), windows {tr.model.backbone.window_sizes()}"
    )
    run["epoch_times"], run["budget"] = tr.fit(out, stem, t_start)
    run["train_wall"] = time.time() - t_start
    log(f"training done in {run['train_wall']:.0f}s, {len(run['epoch_times'])} epochs; "
        f"best {tr.best}")  # fmt: skip
    # ---- export the best checkpoint, measured again in fp32
    ck = torch.load(out / f"{stem}.best.pt", map_location=run["dev"], weights_only=False)
    tr.model.load_state_dict(ck["state_dict"])
    final_val = metrics(tr.predict(tr.va_idx, False), tr.y_val)
    log(f"best checkpoint (epoch {ck['epoch']}) on validation, fp32: {final_val}")
    result = evit.export(tr.model, out, run["size"])
    log(f"ONNX check |torch - onnxruntime| max: {result['max_abs_diff']}")
    run.update(
        t_start=t_start,
        face_crop=data.face_crop,
        data_sha=data.data_sha,
        learnt_from=data.sources,
        report={"val_metrics": final_val, "best_epoch": ck["epoch"]},
    )
    side_path = out / f"{stem}.json"
    side_path.write_text(json.dumps(sidecar(args, run, tr, result), indent=2))
    log(f"wrote {result['backbone']}, {result['head']}, {side_path}")
    log(f"total wall {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
