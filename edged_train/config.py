"""The training run's settings: one frozen :class:`TrainConfig`, built from the command line.

The option names are the dataclass's field names (``--batch-size`` → ``batch_size``), so
the sidecar's ``train_config`` records them under the names the command line used. A few
values are resolved once the data and the start checkpoint are known (the LR default, the
architecture of ``--init-checkpoint``); :meth:`TrainConfig.resolved` returns the new config
instead of changing this one, so what was asked for and what ran are both on record.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_TEST_MODES = (
    "full,full_flip,center,center_flip,ms44-48-52,ms44-48-52_flip,ms40-44-48-52-56_flip"
)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``tools/train_emotion.py`` (help texts: :func:`build_parser`)."""

    data: str | None = None
    image_folder: str | None = None
    test_data: str | None = None
    extra_data: tuple[str, ...] = ()
    extra_repeat: int = 1
    val_fraction: float = 0.1
    out: str = ""
    name: str = "edged_fer"
    version: int = 1
    epochs: int = 70
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 5e-4
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    soft_targets: bool = False
    soft_weight: float = 0.5
    class_balance: float = 0.0
    camera_aug: bool = False
    select_by: str = "accuracy"
    widths: str = "48,96,192,256"
    dropout: float = 0.4
    crop: int = 40
    ema_decay: float = 0.999
    init_checkpoint: str | None = None
    widen_to: str | None = None
    export_from: str | None = None
    teacher: tuple[str, ...] = ()
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    seed: int = 20261125
    #: The validation split's own seed, apart from ``seed``: runs that start from or learn
    #: from each other must hold out the same images, or validation scores memory.
    split_seed: int = 20261125
    threads: int = 2
    device: str = "auto"
    bf16: bool = True
    time_budget_min: float = 0.0
    replay_schedule: str | None = None
    limit: int = 0
    test_modes: str = DEFAULT_TEST_MODES
    mode_tolerance: float = 0.002

    @property
    def stem(self) -> str:
        """File stem of every output: ``NAME_vVERSION``."""
        return f"{self.name}_v{self.version}"

    @property
    def peak_lr(self) -> float:
        """``--lr``, else 0.1 from scratch and 0.01 when fine-tuning."""
        if self.lr is not None:
            return self.lr
        return 0.01 if self.init_checkpoint else 0.1

    def resolved(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _data_options(p.add_argument_group("data"))
    _run_options(p)
    _recipe_options(p)
    _model_options(p)
    _machine_options(p)
    _export_options(p)
    return p


def _data_options(src: argparse._ArgumentGroup) -> None:
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
        "--extra-data",
        nargs="+",
        default=(),
        type=str,
        help="more npz files trained on but never validated on (e.g. real photos cut by "
        "tools/fer_crops.py --photos select-fit); their crop must be --data's",
    )
    src.add_argument(
        "--extra-repeat",
        type=int,
        default=1,
        help="each --extra-data image appears this many times per epoch (a small real "
        "set weighed against FER2013's 28k)",
    )
    src.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="stratified share of the training data held out",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="edged_fer", help="model name (file stem NAME_vVERSION)")
    p.add_argument("--version", type=int, default=1, help="model version (file stem)")
    p.add_argument("--epochs", type=int, default=70, help="planned epochs (the cosine's length)")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak LR (default 0.1 from scratch, 0.01 fine-tuning)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--warmup-epochs", type=int, default=3, help="epochs of linear LR warm-up")
    p.add_argument(
        "--label-smoothing", type=float, default=0.1, help="share spread over the 7 classes"
    )
    p.add_argument("--seed", type=int, default=20261125, help="seed of init, batches, augmentation")
    p.add_argument(
        "--split-seed",
        type=int,
        default=20261125,
        help="seed of the validation split (keep it across runs that start from or teach each "
        "other: every shipped edged_fer used the default)",
    )
    p.add_argument(
        "--limit", type=int, default=0, help="debug: use only the first N training images"
    )


def _recipe_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--teacher",
        nargs="+",
        default=(),
        help="knowledge distillation: one or more trained .pt (e.g. the shipped model, or "
        "several runs: their mean logits are the teacher) whose softened predictions on each "
        "augmented batch are mixed into the target",
    )
    p.add_argument("--kd-weight", type=float, default=0.5, help="weight of the teacher term")
    p.add_argument("--kd-temperature", type=float, default=2.0, help="softening temperature")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", default="48,96,192,256", help="channels of the 4 stages")
    p.add_argument("--dropout", type=float, default=0.4, help="before the linear classifier")
    p.add_argument("--crop", type=int, default=40, help="training crop size (inputs are 48x48)")
    p.add_argument(
        "--ema-decay", type=float, default=0.999, help="decay of the weights' moving average"
    )
    p.add_argument(
        "--init-checkpoint", help="start from this .pt (state_dict + arch) instead of random init"
    )
    p.add_argument(
        "--widen-to",
        help="with --init-checkpoint: widen its stages to these channels (e.g. 64,128,256,384) "
        "keeping its function (each new channel a copy of an old one), then train",
    )


def _machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA when torch sees a GPU",
    )
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


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--export-from",
        help="no training: choose the test-time mode on validation for this checkpoint (a run's "
        "NAME_vN.best.pt) and export it; the run's sidecar next to it is carried over",
    )
    p.add_argument(
        "--test-modes",
        default=DEFAULT_TEST_MODES,
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


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    p = build_parser(description)
    ns = p.parse_args(argv)
    if not ns.data and not ns.image_folder:
        p.error("give --data NPZ or --image-folder DIR")
    if ns.extra_data and not ns.data:
        p.error("--extra-data goes with --data")
    if ns.extra_repeat < 1:
        p.error("--extra-repeat must be >= 1")
    ns.extra_data = tuple(ns.extra_data)
    ns.teacher = tuple(ns.teacher)
    names = {f.name for f in fields(TrainConfig)}
    assert set(vars(ns)) == names, set(vars(ns)) ^ names
    return TrainConfig(**vars(ns))
