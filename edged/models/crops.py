"""Face crops for the emotion models: square box crops and 5-point similarity alignment.

:func:`face_crops` is the one crop the pipeline, ``edged analyze``, the evaluation tool and
the training tool all use: it cuts each face the way a classifier's
:class:`~edged.models.catalog.CropSpec` says that model's training faces were framed (which mode,
how much context, where the centre sits, what fills the outside). Training crops made here
are made by this function from the same detectors, so training and the daemon cannot
frame faces differently.

Every crop is one affine warp per face (``cv2.warpAffine``), square, aspect kept: the
window is defined by the geometry alone. Clipping the window to the frame instead (what
HSEmotion's demo does) would shift and stretch a face at the edge differently from the same
face in the middle, so its emotion would change as it walks out of view. What falls outside
the frame is the replicated edge by default (``CropSpec.border``): a black band is a
feature no training face had, and it cost accuracy on faces near the frame edge.

:func:`box_crops` and :func:`align_crops` are the lower-level forms (margin-based, black
border by default) kept for callers that want a plain window.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edged.models.catalog import CropSpec

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]

#: InsightFace's ArcFace template: left eye, right eye, nose, left and right mouth corner
#: (left/right as seen in the image) in a 112 x 112 crop.
ARCFACE_TEMPLATE: FloatArray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)
ARCFACE_SIZE = 112


def _empty(size: int) -> ImageArray:
    return np.zeros((0, size, size, 3), np.uint8)


def _check(image: npt.NDArray[np.uint8], size: int, margin: float) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"crops take an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    if margin <= -0.5:
        raise ValueError(f"margin must be > -0.5 (a window of positive size), got {margin}")


_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def _warp(
    image: ImageArray,
    matrices: FloatArray,
    size: int,
    border: str = "constant",
    *,
    antialias: bool = False,
) -> ImageArray:
    out = np.empty((matrices.shape[0], size, size, 3), np.uint8)
    for i, m in enumerate(matrices):
        out[i] = _warp_one(image, m.astype(np.float64), size, _BORDERS[border], antialias)
    return out


def _warp_one(
    image: ImageArray, m: npt.NDArray[np.float64], size: int, border: int, antialias: bool
) -> ImageArray:
    """One bilinear warp; with ``antialias``, shrinking by more than 2x goes via INTER_AREA.

    Bilinear sampling of a 300 px face into 48 px reads 4 of every ~40 pixels: the crop
    aliases (jagged edges, noise on skin), and no training face looked like that, because
    datasets are downscaled with area filters. So the face is warped at no less than half
    the source resolution, then area-resized by an integer factor: the same geometry (pixel
    centres map to the same places), none of the aliasing.
    """
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if not antialias or scale >= 0.5:
        return np.asarray(
            cv2.warpAffine(
                image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0
            ),
            np.uint8,
        )
    # Warp to an intermediate crop at half the source resolution or finer, then area-resize:
    # the same geometry (pixel centres map the same way), no aliasing.
    factor = int(np.ceil(0.5 / scale))
    big = size * factor
    up = np.array([[factor, 0, 0.5 * (factor - 1)], [0, factor, 0.5 * (factor - 1)]])
    m2 = up[:, :2] @ m
    m2[:, 2] += up[:, 2]
    inter = cv2.warpAffine(
        image, m2, (big, big), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0
    )
    return np.asarray(cv2.resize(inter, (size, size), interpolation=cv2.INTER_AREA), np.uint8)


# ---------------------------------------------------------------------------------------
# Box crops


def box_windows(boxes: FloatArray, margin: float = 0.0, *, square: bool = False) -> FloatArray:
    """The crop windows (N, 4) ``x1, y1, x2, y2`` for ``boxes`` grown by ``margin``.

    ``margin`` is the fraction of the box's width (height) added on the left and right (top
    and bottom): 0.1 makes a 100 px wide box a 120 px wide window. ``square`` then grows the
    shorter side about the centre to the longer one, so the resize to ``size x size`` keeps
    the face's aspect ratio instead of stretching it.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    if square:
        w = h = np.maximum(w, h)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def box_transforms(
    boxes: FloatArray, size: int, margin: float = 0.0, *, square: bool = False
) -> FloatArray:
    """(N, 2, 3) affine maps from image pixels to crop pixels for :func:`box_crops`.

    Same sampling as ``cv2.resize(image[y1:y2, x1:x2], (size, size))``: pixel centres of the
    window map onto pixel centres of the crop, so an in-frame crop equals HSEmotion's.
    """
    return _window_transforms(box_windows(boxes, margin, square=square), size)


def _window_transforms(win: FloatArray, size: int) -> FloatArray:
    """(N, 2, 3) maps of windows ``x1, y1, x2, y2`` onto ``size x size`` crops, pixel centres
    onto pixel centres (so an in-frame window equals ``cv2.resize`` of its pixels)."""
    sx = size / (win[:, 2] - win[:, 0])
    sy = size / (win[:, 3] - win[:, 1])
    m = np.zeros((win.shape[0], 2, 3), np.float32)
    m[:, 0, 0] = sx
    m[:, 0, 2] = (0.5 - win[:, 0]) * sx - 0.5
    m[:, 1, 1] = sy
    m[:, 1, 2] = (0.5 - win[:, 1]) * sy - 0.5
    return m


def box_crops(
    image: ImageArray,
    boxes: FloatArray,
    size: int,
    margin: float = 0.0,
    *,
    square: bool = False,
) -> ImageArray:
    """Each box grown by ``margin`` and resized straight to ``size x size`` (HSEmotion's crop).

    HSEmotion's models were trained on face-box crops resized without keeping the aspect
    ratio, so ``square`` defaults to False. Parts of the window outside the image are black.
    """
    _check(image, size, margin)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if b.shape[0] == 0:
        return _empty(size)
    return _warp(image, box_transforms(b, size, margin, square=square), size)


# ---------------------------------------------------------------------------------------
# 5-point alignment


def template(size: int, margin: float = 0.0) -> FloatArray:
    """The ArcFace template for a ``size x size`` crop, zoomed out by ``margin``.

    ``margin = 0`` is ArcFace's tight framing (eyes at 34 % / 66 % of the width). Emotion
    models profit from a little more context (forehead, chin); ``margin`` adds that fraction
    of the framed face on each side, exactly like :func:`box_crops`' margin: the template is
    shrunk by ``1 + 2 * margin`` about the crop centre.
    """
    centre = ARCFACE_SIZE / 2
    pts = (ARCFACE_TEMPLATE - centre) / (1 + 2 * margin) + centre
    return (pts * (size / ARCFACE_SIZE)).astype(np.float32)


def similarity_transforms(landmarks: FloatArray, dst: FloatArray) -> FloatArray:
    """(N, 2, 3) least-squares similarity transforms mapping each face's points onto ``dst``.

    Umeyama's closed form (rotation, uniform scale, translation; no reflection), batched over
    faces with one SVD call: the same estimate as InsightFace's ``norm_crop`` (scikit-image
    ``SimilarityTransform``), without the dependency. Degenerate input (all points equal)
    gets scale 1 rather than a division by zero.
    """
    src = np.asarray(landmarks, np.float64).reshape(-1, dst.shape[0], 2)
    d = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=1), d.mean(axis=0)
    sc, dc = src - mu_s[:, None, :], d - mu_d
    n = src.shape[1]
    cov = np.einsum("ki,nkj->nij", dc, sc) / n
    u, s, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign[sign == 0] = 1.0
    u[:, :, 1] *= sign[:, None]  # U @ diag(1, sign)
    rot = u @ vt
    var_s = (sc**2).sum(axis=(1, 2)) / n
    trace = s[:, 0] + s[:, 1] * sign
    scale = np.where(var_s > 1e-12, trace / np.maximum(var_s, 1e-12), 1.0)
    m = np.empty((src.shape[0], 2, 3), np.float64)
    m[:, :, :2] = scale[:, None, None] * rot
    m[:, :, 2] = mu_d - np.einsum("nij,nj->ni", m[:, :, :2], mu_s)
    return m.astype(np.float32)


def align_transforms(landmarks: FloatArray, size: int, margin: float = 0.0) -> FloatArray:
    """(N, 2, 3) affine maps from image pixels to aligned-crop pixels for :func:`align_crops`."""
    return similarity_transforms(landmarks, template(size, margin))


def align_crops(
    image: ImageArray, landmarks: FloatArray, size: int, margin: float = 0.0
) -> ImageArray:
    """Faces warped so their 5 landmarks land on the ArcFace template scaled to ``size``.

    Removes in-plane rotation and scale, so the classifier sees every face upright and at
    the same size; ``margin`` widens the view (see :func:`template`).
    """
    _check(image, size, margin)
    pts = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    if pts.shape[0] == 0:
        return _empty(size)
    return _warp(image, align_transforms(pts, size, margin), size)


# ---------------------------------------------------------------------------------------
# Crops framed like a model's training faces


def crop_transforms(
    spec: CropSpec, boxes: FloatArray, landmarks: FloatArray, size: int
) -> FloatArray:
    """(N, 2, 3) affine maps from image pixels to ``size x size`` crop pixels for ``spec``.

    ``box``: a square window of side ``spec.scale * max(w, h)`` centred on the box centre
    moved by ``spec.shift`` (fractions of the side). ``align``: the similarity that puts the
    landmarks onto ``spec.template`` zoomed out by ``spec.scale`` and moved by ``shift``.
    """
    if spec.mode == "align":
        pts = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        unit = (np.asarray(spec.template, np.float32) - 0.5) / spec.scale + 0.5
        unit = unit - np.asarray(spec.shift, np.float32) / spec.scale
        return similarity_transforms(pts, (unit * size).astype(np.float32))
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)
    side = spec.scale * np.maximum(w, h)
    cx = (b[:, 0] + b[:, 2]) / 2 + spec.shift[0] * side
    cy = (b[:, 1] + b[:, 3]) / 2 + spec.shift[1] * side
    win = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
    return _window_transforms(win.astype(np.float32), size)


def face_crops(
    image: ImageArray, boxes: FloatArray, landmarks: FloatArray, size: int, spec: CropSpec
) -> ImageArray:
    """Every face of ``image`` as a ``size x size`` crop framed the way ``spec`` says.

    ``boxes`` (N, 4) and ``landmarks`` (N, 5, 2) are the detector's, in image pixels.
    """
    _check(image, size, 0.0)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if b.shape[0] == 0:
        return _empty(size)
    return _warp(
        image, crop_transforms(spec, b, landmarks, size), size, spec.border, antialias=True
    )
