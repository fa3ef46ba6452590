"""edged_train.data's reading of DIR/<label>/* image folders: one reading for training,
tools/fer_crops.py --image-folder and tools/eval_emotion.py --image-folder (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged_train.data import CANONICAL, labelled_files, load_image_folder


def _folder(root: Path, names: dict[str, int]) -> Path:
    for label, n in names.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            img = np.full((60, 50, 3), 40 * i + 10, np.uint8)
            assert cv2.imwrite(str(root / label / f"{i}.png"), img)
        (root / label / "notes.txt").write_text("not an image")
    return root


def test_label_folders_in_any_catalogue_spelling_map_to_canonical_labels(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"fear": 2, "Happy": 1, "contempt": 1, "surprised": 1})
    items = labelled_files(root)
    # folders in sorted order (upper case first), files sorted within each
    assert [lab for _, lab in items] == ["happy", "contemptuous", "fearful", "fearful", "surprised"]
    assert all(p.suffix == ".png" for p, _ in items)  # the .txt files are not images


def test_an_unknown_label_folder_is_an_error_that_names_it(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"happy": 1, "hapy": 1})
    with pytest.raises(SystemExit, match="hapy"):
        labelled_files(root)


def test_training_folders_skip_contempt_and_keep_the_models_class_order(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"contempt": 2, "sadness": 1, "angry": 1})
    images, labels, files = load_image_folder(root)
    assert images.shape == (2, 48, 48) and images.dtype == np.uint8
    assert [CANONICAL[i] for i in labels] == ["angry", "sad"]
    assert files == [str(Path("angry") / "0.png"), str(Path("sadness") / "0.png")]
