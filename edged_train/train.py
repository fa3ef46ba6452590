"""edged_fer's training: SGD with Nesterov momentum and an EMA of the weights, FER+ soft
targets, class-balanced loss, optional distillation; checkpoints chosen on validation.

The order of random draws is the tool's contract: the same command line (seed) gives the
same batches and augmentations, so a run can be repeated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged_train.config import TrainConfig
from edged_train.data import (
    FER_CLASSES,
    MEAN,
    STD,
    Dataset,
    augment,
    camera_augment,
    class_weights,
)
from edged_train.export import tta_logits
from edged_train.loop import Budget, Log, MetricsCsv, Schedule, read_replay, run_epochs
from edged_train.loop import selection_metric as _metric

CSV_HEADER = [
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


@dataclass
class Run:
    """Where and how a run executes: its config, device, output folder and log."""

    cfg: TrainConfig
    dev: Any
    out: Path
    log: Log
    t_start: float

    @property
    def autocast_dev(self) -> str:
        return "cuda" if self.dev.type == "cuda" else "cpu"


@dataclass
class Split:
    """The training tensors on their devices and the train/validation indices."""

    x_all: Any  # uint8 N,1,48,48 (CPU)
    y_all: Any
    t_soft: Any | None
    x_val: Any  # normalised, on the device
    y_val: Any
    tr_idx: np.ndarray
    va_idx: np.ndarray


def make_split(run: Run, data: Dataset, tr_idx: np.ndarray, va_idx: np.ndarray) -> Split:
    import torch

    cfg = run.cfg
    x_all = torch.from_numpy(np.ascontiguousarray(data.images)).unsqueeze(1)
    y_all = torch.from_numpy(data.labels)
    t_soft = None
    if data.soft is not None and data.soft_valid is not None:
        onehot = np.eye(7, dtype=np.float32)[data.labels]
        w = np.where(data.soft_valid[:, None], cfg.soft_weight, 0.0).astype(np.float32)
        t_soft = torch.from_numpy((1 - w) * onehot + w * data.soft)
        run.log(
            f"soft targets: FER+ distribution weight {cfg.soft_weight} "
            f"on {int(data.soft_valid.sum())} images"
        )
    x_val = ((x_all[va_idx].float() / 255 - MEAN) / STD).to(run.dev)
    return Split(x_all, y_all, t_soft, x_val, y_all[va_idx].to(run.dev), tr_idx, va_idx)


def logits_on(run: Run, model: Any, x: Any, mode: str, bs: int = 512, fast: bool = False) -> Any:
    """Logits of ``model`` under a test-time mode, in batches (bf16 autocast if ``fast``)."""
    import torch

    with torch.no_grad():
        model.eval()
        outs = []
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].contiguous(memory_format=torch.channels_last)
            with torch.autocast(run.autocast_dev, dtype=torch.bfloat16, enabled=fast):
                outs.append(tta_logits(model, xb, mode, run.cfg.crop))
        return torch.cat(outs)


class EmotionTrainer:
    """The epochs of one run: train, validate (raw and EMA weights), checkpoint."""

    def __init__(
        self, run: Run, split: Split, net: Any, teacher: Any | None, widths: tuple[int, ...]
    ) -> None:
        import torch

        cfg = run.cfg
        self.run, self.split, self.net, self.teacher, self.widths = run, split, net, teacher, widths
        self.ema = torch.optim.swa_utils.AveragedModel(
            net,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
        decay: list[Any] = []
        no_decay: list[Any] = []
        for _n, p_ in net.named_parameters():
            (no_decay if p_.ndim <= 1 else decay).append(p_)
        self.opt = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.peak_lr,
            momentum=0.9,
            nesterov=True,
        )
        steps = math.ceil(len(split.tr_idx) / cfg.batch_size)
        epochs = 0 if cfg.export_from else cfg.epochs  # export only: the loop does nothing
        self.replay = read_replay(cfg.replay_schedule) if cfg.replay_schedule else {}
        if self.replay:
            epochs = self.replay[1]
        self.schedule = Schedule(cfg.peak_lr, cfg.warmup_epochs, steps, epochs)
        self.class_w = None
        if cfg.class_balance > 0:
            cw = class_weights(split.y_all.numpy()[split.tr_idx], cfg.class_balance)
            self.class_w = torch.tensor(cw, dtype=torch.float32, device=run.dev)
            run.log(
                f"class-balanced loss (power {cfg.class_balance}): weights "
                f"{np.round(cw, 2).tolist()}"
            )
        self.rng_t = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.best: dict[str, Any] = {"acc": -1.0}

    def acc(self, model: Any, mode: str) -> float:
        """Per-epoch validation for checkpoint selection, under the training autocast (bf16)
        to keep it cheap; the final test-time-mode choice is fp32."""
        cfg, s = self.run.cfg, self.split
        pred = logits_on(self.run, model, s.x_val, mode, fast=cfg.bf16).argmax(1)
        return _metric(pred, s.y_val, cfg.select_by)

    def loss(self, out_: Any, yb: Any, bi: Any, xb: Any) -> Any:
        """Cross-entropy (hard or FER+ soft targets, smoothed, class-weighted), mixed with
        the teacher's KL term when distilling."""
        import torch
        import torch.nn.functional as nnf

        cfg, dev = self.run.cfg, self.run.dev
        if self.split.t_soft is not None:
            tb = self.split.t_soft[bi].to(dev)
            tb = tb * (1 - cfg.label_smoothing) + cfg.label_smoothing / 7
            per = -(tb * nnf.log_softmax(out_, 1)).sum(1)
        else:
            per = nnf.cross_entropy(out_, yb, label_smoothing=cfg.label_smoothing, reduction="none")
        loss = (per * self.class_w[yb]).mean() if self.class_w is not None else per.mean()
        if self.teacher is None:
            return loss
        # Hinton et al.: KL between temperature-softened distributions, scaled by T^2 so its
        # gradient keeps the size of the hard-label term's
        t_ = cfg.kd_temperature
        with (
            torch.no_grad(),
            torch.autocast(self.run.autocast_dev, dtype=torch.bfloat16, enabled=cfg.bf16),
        ):
            t_logits = self.teacher(xb).float()
        kd = nnf.kl_div(
            nnf.log_softmax(out_ / t_, 1),
            nnf.log_softmax(t_logits / t_, 1),
            reduction="batchmean",
            log_target=True,
        ) * (t_ * t_)
        return (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over a seeded permutation of the training split: (mean loss, accuracy)."""
        import torch

        cfg, s, dev = self.run.cfg, self.split, self.run.dev
        self.net.train()
        perm = s.tr_idx[torch.randperm(len(s.tr_idx), generator=self.rng_t).numpy()]
        tot_loss = tot_ok = tot_n = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            bi = torch.from_numpy(perm[i : i + cfg.batch_size])
            if len(bi) < 2:
                continue
            xb = s.x_all[bi].to(dev).float().div_(255)
            if cfg.camera_aug:
                xb = camera_augment(xb, self.rng_t)
            xb = augment(xb, cfg.crop, self.rng_t).contiguous(memory_format=torch.channels_last)
            yb = s.y_all[bi].to(dev)
            for g in self.opt.param_groups:
                g["lr"] = self.schedule.lr_at(self.step)
            with torch.autocast(self.run.autocast_dev, dtype=torch.bfloat16, enabled=cfg.bf16):
                out_ = self.net(xb)
            out_ = out_.float()
            loss = self.loss(out_, yb, bi, xb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.ema.update_parameters(self.net)
            self.step += 1
            tot_loss += loss.item() * len(bi)
            tot_ok += (out_.argmax(1) == yb).sum().item()
            tot_n += len(bi)
        return tot_loss / tot_n, tot_ok / tot_n

    def end_epoch(self, epoch: int, stats: tuple[float, float], te: float) -> None:
        """Validation (flip only in the last 30 %, EMA from half-way), the CSV row, the log
        line and the checkpoints."""
        epochs = self.schedule.epochs
        late = epoch > int(epochs * 0.7) or epoch == epochs
        va_full = self.acc(self.net, "full")
        va_flip = self.acc(self.net, "full_flip") if late else float("nan")
        eva_full = eva_flip = float("nan")
        if epoch > int(epochs * 0.5) or epoch == epochs:
            eva_full = self.acc(self.ema, "full")
        elapsed = time.time() - self.run.t_start
        lr = self.schedule.lr_at(self.step - 1)
        loss, train_acc = stats
        vals = (va_full, va_flip, eva_full, eva_flip)
        self.metrics.row(
            [epoch, epochs, f"{lr:.5f}", f"{loss:.4f}", f"{train_acc:.4f}"]
            + [f"{v:.4f}" for v in vals]
            + [f"{te:.1f}", f"{elapsed:.0f}"]
        )
        self.run.log(
            f"epoch {epoch}/{epochs} lr {lr:.4f} loss {loss:.4f} "
            f"train_acc {train_acc:.4f} val full {va_full:.4f} flip {va_flip:.4f} | "
            f"ema {eva_full:.4f} {eva_flip:.4f} | {te:.0f}s (elapsed {elapsed:.0f}s)"
        )
        self.checkpoint(epoch, va_full, eva_full)

    def arch(self) -> dict[str, Any]:
        cfg = self.run.cfg
        return {"widths": list(self.widths), "dropout": cfg.dropout, "crop": cfg.crop}

    def checkpoint(self, epoch: int, va_full: float, eva_full: float) -> None:
        """``.last.pt`` every epoch; ``.best.pt`` when raw or EMA weights beat the best."""
        import torch

        out, stem = self.run.out, self.run.cfg.stem
        common = {"arch": self.arch(), "classes": FER_CLASSES}
        torch.save(
            {**common, "state_dict": self.net.state_dict(), "epoch": epoch},
            out / f"{stem}.last.pt",
        )
        for tag, a_, m_ in (("raw", va_full, self.net), ("ema", eva_full, self.ema.module)):
            if a_ == a_ and a_ > self.best["acc"]:
                self.best = {"acc": a_, "epoch": epoch, "which": tag}
                state = {k: v.detach().clone() for k, v in m_.state_dict().items()}
                torch.save(
                    {**common, "state_dict": state, "epoch": epoch, "which": tag},
                    out / f"{stem}.best.pt",
                )
                self.run.log(f"  new best val {a_:.4f} ({tag}, epoch {epoch})")

    def fit(self) -> tuple[list[float], Budget]:
        """All epochs; returns the epoch times and the budget (with its plan changes)."""
        cfg = self.run.cfg
        minutes = 0.0 if self.replay else cfg.time_budget_min
        budget = Budget(minutes, cfg.epochs, cfg.warmup_epochs, 60, self.run.t_start)
        self.metrics = MetricsCsv(self.run.out / f"{cfg.stem}.metrics.csv", CSV_HEADER)
        try:
            times = run_epochs(
                self.schedule, self.train_epoch, self.end_epoch, budget, self.run.log, self.replay
            )
        finally:
            self.metrics.close()
        return times, budget
