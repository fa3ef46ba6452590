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

(``python -m edged_train`` from the repository root is the same command.) Test data is
never used for training or model selection: ``--test-data`` only adds a reporting figure to
the sidecar after the model has been chosen on the validation split.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged_train import sidecar
from edged_train.config import TrainConfig, parse_args
from edged_train.data import (
    CANONICAL,
    FER_CLASSES,
    Dataset,
    joined,
    load_folder,
    load_npz,
    normalised,
    sha256_file,
    stratified_split,
)
from edged_train.export import choose_mode, export_onnx, onnx_accuracy
from edged_train.loop import selection_metric
from edged_train.model import build_model, ensemble, load_checkpoint, load_trained, widen
from edged_train.train import EmotionTrainer, Run, Split, logits_on, make_split


def start(cfg: TrainConfig) -> Run:
    """Seeds, threads, device, output folder and the run's log file."""
    import torch

    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if cuda else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_f = (out / f"{cfg.stem}.train.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    log(f"args: {cfg.as_dict()}")
    log(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")
    return Run(cfg, dev, out, log, t_start)


def load_data(run: Run) -> tuple[Dataset, TrainConfig]:
    cfg = run.cfg
    if cfg.image_folder:
        data = load_folder(cfg.image_folder)
        if cfg.soft_targets:
            run.log("--soft-targets ignored for an image folder (no FER+ votes)")
            cfg = cfg.resolved(soft_targets=False)
    else:
        assert cfg.data
        data = load_npz(cfg.data, cfg.soft_targets)
        if data.face_crop:
            run.log(f"training crops made by edged's detector + crop: {data.face_crop}")
    if cfg.limit:  # debug: seeded random subset
        data = data.subset(cfg.limit, cfg.seed)
    return data, cfg


def split_data(run: Run, data: Dataset) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The stratified validation split of ``--data``; ``--extra-data`` is added to the
    training side only (``--extra-repeat`` times), so validation stays the same FER2013
    images whatever extras a run learns from and runs stay comparable."""
    cfg = run.cfg
    if cfg.data:
        name = Path(cfg.data).name
        sidecar.check_lineage(cfg, name, data.data_sha[name])
    tr_idx, va_idx = stratified_split(data.labels, cfg.val_fraction, cfg.split_seed)
    if not cfg.extra_data:
        return data, tr_idx, va_idx
    extras = [load_npz(path, cfg.soft_targets) for path in cfg.extra_data]
    data, extra_idx = joined(data, extras)
    run.log(
        f"extra training data {list(cfg.extra_data)}: {len(extra_idx)} images x "
        f"{cfg.extra_repeat}, counts {np.bincount(data.labels[extra_idx], minlength=7).tolist()}"
    )
    return data, np.concatenate([tr_idx, *([extra_idx] * cfg.extra_repeat)]), va_idx


def build_net(run: Run) -> tuple[Any, tuple[int, ...], TrainConfig, dict[str, str] | None]:
    """The network (random, or from ``--init-checkpoint``/``--export-from``, whose
    architecture wins over the command line's); the config with the LR etc. resolved."""
    cfg = run.cfg
    widths = tuple(int(v) for v in cfg.widths.split(","))
    init_meta = None
    start_from = cfg.export_from or cfg.init_checkpoint
    ck: dict[str, Any] = {}
    if start_from:
        ck = load_checkpoint(start_from)
        widths = tuple(ck["arch"]["widths"])
        cfg = cfg.resolved(
            dropout=ck["arch"].get("dropout", cfg.dropout), crop=ck["arch"].get("crop", cfg.crop)
        )
        init_meta = {"path": str(start_from), "sha256": sha256_file(start_from)}
    net = build_model(widths, 7, cfg.dropout)
    if cfg.init_checkpoint and not cfg.export_from:
        net.load_state_dict(ck["state_dict"])
        run.log(f"initialised from {cfg.init_checkpoint}")
        if cfg.widen_to:
            wider = tuple(int(v) for v in cfg.widen_to.split(","))
            net = widen(net, wider, seed=cfg.seed)
            run.log(f"widened {widths} -> {wider}, same function (new channels copy old ones)")
            widths = wider
    elif cfg.widen_to:
        raise SystemExit("--widen-to needs --init-checkpoint (the network to widen)")
    changes: dict[str, Any] = {"lr": cfg.peak_lr}
    if cfg.replay_schedule:
        changes["time_budget_min"] = 0
    return net, widths, cfg.resolved(**changes), init_meta


def load_teacher(run: Run) -> tuple[Any | None, list[dict[str, str]] | None]:
    import torch

    cfg = run.cfg
    if not cfg.teacher or cfg.export_from:
        return None, None
    nets = [load_trained(path)[0] for path in cfg.teacher]
    teacher = ensemble(nets).to(run.dev).to(memory_format=torch.channels_last)
    for p_ in teacher.parameters():
        p_.requires_grad_(False)
    run.log(
        f"distilling from {list(cfg.teacher)} (mean logits of {len(nets)}; weight "
        f"{cfg.kd_weight}, temperature {cfg.kd_temperature})"
    )
    return teacher, [{"path": str(t), "sha256": sha256_file(t)} for t in cfg.teacher]


def choose_and_save(run: Run, split: Split) -> tuple[Any, dict[str, Any], str, dict[str, float]]:
    """The best checkpoint, its test-time mode chosen on validation (fp32), saved as .pt."""
    import torch

    cfg = run.cfg
    best_path = Path(cfg.export_from) if cfg.export_from else run.out / f"{cfg.stem}.best.pt"
    final, ck = load_trained(best_path)
    x_val, y_val = split.x_val.cpu(), split.y_val.cpu()
    with torch.no_grad():
        mode_acc = {
            m: selection_metric(logits_on(run, final, x_val, m).argmax(1), y_val, cfg.select_by)
            for m in cfg.test_modes.split(",")
        }
    mode = choose_mode(mode_acc, cfg.mode_tolerance, cfg.crop)
    run.log(
        f"validation {cfg.select_by} by test-time mode (fp32): {mode_acc} "
        f"-> baked into ONNX: {mode}"
    )
    torch.save(
        {
            "arch": {
                "widths": list(ck["arch"]["widths"]),
                "dropout": cfg.dropout,
                "crop": cfg.crop,
            },
            "classes": FER_CLASSES,
            "canonical": CANONICAL,
            "mode": mode,
            "state_dict": {k: v.float() for k, v in final.state_dict().items()},
        },
        run.out / f"{cfg.stem}.pt",
    )
    return final, ck, mode, mode_acc


def export_all(
    run: Run, final: Any, mode: str, split: Split, data_sha: dict[str, str]
) -> tuple[float, float | None, dict[str, Any] | None]:
    """The chosen mode's graph, plus a one-pass ``_fast`` graph beside a multi-view one (for
    machines that need the speed more than the last point); accuracies measured on the
    exported graphs."""
    cfg = run.cfg
    test_set = None
    if cfg.test_data:  # reporting only, after selection; read and hashed once
        dt = np.load(cfg.test_data)
        test_set = (normalised(dt["images"]), dt["labels"])
        data_sha[Path(cfg.test_data).name] = sha256_file(cfg.test_data)
    x_val, y_val = split.x_val.cpu(), split.y_val.cpu()

    def export(mode_: str, path: Path) -> tuple[float, float | None]:
        sess = export_onnx(final, mode_, cfg.crop, path, x_val[:64], run.log)
        test_acc = None if test_set is None else onnx_accuracy(sess, *test_set)
        if test_set is not None:
            run.log(
                f"{path.name}: test accuracy (reporting only, {len(test_set[1])} images) "
                f"{test_acc:.4f}"
            )
        return onnx_accuracy(sess, x_val.numpy(), y_val.numpy()), test_acc

    val_acc, test_acc = export(mode, run.out / f"{cfg.stem}.onnx")
    fast = None
    if mode != "full":
        fast_path = run.out / f"{cfg.stem}_fast.onnx"
        fast_val, fast_test = export("full", fast_path)
        fast = {
            "file": fast_path.name,
            "sha256": sha256_file(fast_path),
            "test_time_mode": "full",
            "val_accuracy": fast_val,
            "test_accuracy": fast_test,
        }
    return val_acc, test_acc, fast


def main(argv: list[str] | None = None) -> None:
    import torch

    run = start(parse_args(argv, description=__doc__))
    data, run.cfg = load_data(run)
    data, tr_idx, va_idx = split_data(run, data)
    run.log(
        f"data: {len(data.images)} images, train {len(tr_idx)}, val {len(va_idx)}, "
        f"counts {np.bincount(data.labels, minlength=7).tolist()}"
    )
    split = make_split(run, data, tr_idx, va_idx)
    net, widths, run.cfg, init_meta = build_net(run)
    teacher, teacher_meta = load_teacher(run)
    net = net.to(run.dev).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in net.parameters())
    run.log(f"model widths {widths}, {n_params} parameters")
    trainer = EmotionTrainer(run, split, net, teacher, widths)
    epoch_times, budget = trainer.fit()
    train_wall = time.time() - run.t_start
    run.log(f"training done in {train_wall:.0f}s, {len(epoch_times)} epochs; best {trainer.best}")
    final, ck, mode, mode_acc = choose_and_save(run, split)
    val_acc, test_acc, fast = export_all(run, final, mode, split, data.data_sha)
    onnx_path = run.out / f"{run.cfg.stem}.onnx"
    prov = sidecar.Provenance(
        effective_epochs=len(epoch_times),
        scheduled_epochs=trainer.schedule.epochs,
        epoch_changes=budget.changes,
        best_epoch=ck.get("epoch"),
        best_weights=ck.get("which"),
        test_time_mode=mode,
        val_accuracy_by_mode=mode_acc,
        params=n_params,
        data_sha256=data.data_sha,
        learnt_from=data.sources,
        val_size=len(va_idx),
        train_size=len(tr_idx),
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        fast_variant=fast,
        torch_version=torch.__version__,
        init_checkpoint=init_meta,
        teacher=teacher_meta,
        train_wall_s=train_wall,
    )
    side = sidecar.build(run.cfg, sha256_file(onnx_path), data.face_crop, prov)
    if run.cfg.export_from:
        sidecar.carry_over(side, run.cfg, run.t_start)
    side_path = run.out / f"{run.cfg.stem}.json"
    side_path.write_text(sidecar.dumps(side))
    run.log(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), {side_path}")
    run.log(f"total wall {time.time() - run.t_start:.0f}s")
