"""tools/eval_emotion.py --pipeline --candidate: a freshly trained file is measured exactly as
the catalogue model it would become (same detector, crop and classifier code)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import eval_emotion  # noqa: E402
from emotion_data import load_photos, person_of  # noqa: E402

MODELS = REPO / "models" / "edged_fer"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three photos each of three classes of ``select-check``, as DIR/<label>/*."""
    root = tmp_path_factory.mktemp("photos")
    chosen = load_photos(half="select-check")
    for label in ("happy", "sad", "surprised"):
        (root / label).mkdir()
        for p in [p for p in chosen if p.label == label][:3]:
            shutil.copyfile(p.path, root / label / p.path.name)
    return root


def _run(tmp_path: Path, photos: Path, *args: str) -> dict:
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
    argv = ["--pipeline", "--image-folder", str(photos), *args, "--json", str(out)]
    assert eval_emotion.main(argv) == 0
    return json.loads(out.read_text())


def test_a_candidate_file_scores_what_its_catalogue_entry_scores(
    tmp_path: Path, photos: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for ext in (".onnx", ".json"):
        shutil.copyfile(MODELS / f"edged_fer_v4{ext}", run / f"edged_fer_v9{ext}")
    named = _run(tmp_path, photos, "--classifier", "edged_fer_v4")
    candidate = _run(tmp_path, photos, "--candidate", str(run / "edged_fer_v9.onnx"))
    assert candidate["source"]["classifier"] == "edged_fer_finetuned"
    assert candidate["source"]["crop"] == named["source"]["crop"]
    assert candidate["confusion_matrix"] == named["confusion_matrix"]
    assert candidate["n"] == named["n"] == 9


def test_a_candidate_beside_your_models_directory_leaves_it_untouched(
    tmp_path: Path, photos: Path
) -> None:
    from edged.models.catalog import CATALOG
    from tests.conftest import make_models_dir, shared_root

    mine = make_models_dir(shared_root(), tmp_path / "mine", only=[CATALOG["yunet"].files[0]])
    before = sorted(str(q.relative_to(mine)) for q in mine.rglob("*"))
    got = _run(
        tmp_path,
        photos,
        *("--models-dir", str(mine), "--candidate", str(MODELS / "edged_fer_v4.onnx")),
    )
    assert got["source"]["classifier"] == "edged_fer_finetuned" and got["n"] == 9
    assert sorted(str(q.relative_to(mine)) for q in mine.rglob("*")) == before


def test_a_candidate_trained_on_other_crops_is_refused_with_both_crops_named(
    tmp_path: Path, photos: Path
) -> None:
    with pytest.raises(SystemExit, match=r"face_crop None is not .*'mode': 'align'"):
        _run(tmp_path, photos, "--candidate", str(MODELS / "edged_fer_v2.onnx"))


def test_a_model_is_refused_on_photos_its_sidecar_says_it_learnt(tmp_path: Path) -> None:
    """v8 learnt the whole selection half and v7 its ``select-fit`` part: scoring either on
    what it learnt would measure memory, so the tool stops and names the sidecar and the
    photos (a quantized model answers for its source); ``--allow-learnt`` overrides."""
    from emotion_data import learnt_parts

    v8 = json.loads((MODELS / "edged_fer_v8.json").read_text())
    assert learnt_parts(v8) == {"select-fit", "select-check"}
    few = ("--pipeline", "--limit-per-class", "1", "--json", str(tmp_path / "m.json"))
    for name, half in (
        ("edged_fer", "select-check"),
        ("edged_fer_int8", "select-fit"),
        ("edged_fer_v7", "select"),
    ):
        with pytest.raises(SystemExit):
            eval_emotion.main([*few, "--classifier", name, "--half", half])
    with pytest.raises(SystemExit):  # the model compared with is checked too
        eval_emotion.main(
            [
                *few,
                "--classifier",
                "edged_fer_v7",
                "--half",
                "select-check",
                "--against",
                "edged_fer",
            ]
        )
    assert eval_emotion.main([*few, "--classifier", "edged_fer_v7", "--half", "select-check"]) == 0
    allowed = [*few, "--classifier", "edged_fer", "--half", "select-check", "--allow-learnt"]
    assert eval_emotion.main(allowed) == 0


def test_the_refusal_names_the_sidecar_and_the_photos(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        eval_emotion.main(["--pipeline", "--classifier", "edged_fer", "--half", "select-check"])
    err = capsys.readouterr().err
    assert "edged_fer_v8.json" in err and "facial_expressions:select" in err
    assert "--allow-learnt" in err


def test_the_paired_bootstrap_resamples_people_and_says_when_a_difference_is_unclear() -> None:
    import numpy as np

    y = np.array(["happy", "sad", "happy", "sad", "angry", "angry"])
    people = ["a", "a", "b", "b", "c", "c"]
    labels = ["happy", "sad", "angry", "no_face"]
    same = eval_emotion.paired_bootstrap(y, y, y, people, labels, resamples=200)
    assert same["people"] == 3
    assert same["macro_f1"]["difference"] == 0.0 and same["macro_f1"]["interval_95"] == [0, 0]
    assert same["macro_f1"]["share_ahead"] == 0.0
    # right everywhere against wrong everywhere: ahead in every resample
    wrong = np.array(["sad", "happy", "sad", "happy", "happy", "happy"])
    clear = eval_emotion.paired_bootstrap(y, y, wrong, people, labels, resamples=200)
    assert clear["accuracy"]["difference"] == 1.0 and clear["accuracy"]["share_ahead"] == 1.0
    assert clear["macro_f1"]["interval_95"][0] > 0
    # one person's photos decide it: the interval spans 0 when that person is left out
    one = np.array(["happy", "sad", "sad", "happy", "happy", "happy"])
    split = eval_emotion.paired_bootstrap(y, one, wrong, people, labels, resamples=400)
    assert split["accuracy"]["interval_95"][0] == 0.0 < split["accuracy"]["interval_95"][1]
    assert 0.0 < split["accuracy"]["share_ahead"] < 1.0


def test_the_bootstraps_macro_f1_from_counts_is_the_reports_macro_f1() -> None:
    """The bootstrap scores resamples from confusion counts; it must be the same macro-F1
    the report prints (classes absent from the truth left out of the mean)."""
    import numpy as np

    rng = np.random.default_rng(3)
    classes = sorted([*eval_emotion.CANONICAL, eval_emotion.NO_FACE])
    at = {c: i for i, c in enumerate(classes)}
    for n in (5, 40, 300):
        y = rng.choice(["happy", "sad", "angry", "disgusted"], n)
        pred = np.where(rng.random(n) < 0.5, y, rng.choice(["happy", "no_face", "fearful"], n))
        cm = np.zeros((len(classes), len(classes)), int)
        np.add.at(cm, ([at[c] for c in y], [at[c] for c in pred]), 1)
        want = eval_emotion.metrics(y, pred, classes)["macro_f1"]
        assert abs(float(eval_emotion.macro_f1_of_counts(cm)) - want) < 1e-12


def test_against_measures_both_models_on_the_same_photos_and_compares_them(
    tmp_path: Path, photos: Path
) -> None:
    res = _run(tmp_path, photos, "--classifier", "edged_fer", "--against", "edged_fer_v2_fast")
    other = res["against"]
    assert other["classifier"] == "edged_fer_v2_fast" and other["n"] == res["n"] == 9
    cmp = other["comparison"]
    assert cmp["people"] == len({person_of(p.name) for p in photos.rglob("*.jpg")})
    assert abs(cmp["macro_f1"]["difference"] - (res["macro_f1"] - other["macro_f1"])) < 1e-9
    assert abs(cmp["accuracy"]["difference"] - (res["accuracy"] - other["accuracy"])) < 1e-9
    lo, hi = cmp["macro_f1"]["interval_95"]
    assert lo <= hi
