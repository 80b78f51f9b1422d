"""benchmarks/common.py's split by patient: the LGG cross-validation tests every patient once."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


def _benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (its own imports of ``common`` resolved from the benchmarks folder)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


@pytest.fixture(scope="module")
def common():
    return _benchmark("common")


def test_folds_of_one_seed_test_every_case_once(common):
    cases = [SimpleNamespace(case_id=f"p{i:02d}") for i in range(80)]
    tested = []
    for fold in range(4):
        train, test = common.split_by_case(cases, 20, 0, fold)
        names = {c.case_id for c in test}
        assert len(names) == 20 and not names & {c.case_id for c in train} and len(train) == 60
        tested += names
    assert sorted(tested) == sorted(c.case_id for c in cases)
    assert common.split_by_case(cases, 20, 0, 0) == common.split_by_case(cases, 20, 0)  # fold 0 is the plain split
    assert common.split_by_case(cases, 20, 1, 0) != common.split_by_case(cases, 20, 0, 0)
    with pytest.raises(SystemExit, match="--fold must be 0 to 3"):
        common.split_by_case(cases, 20, 0, 4)


def _fake_fold(folder, cases, dice, n_slices):
    (folder / "report").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"test_cases": cases}))
    methods = {"amecam": {"slice": {"dice": dice, "n_dice": n_slices}, "volume": {"dice": dice / 2, "n_dice": len(cases)}}}
    (folder / "report" / "report.json").write_text(json.dumps({"methods": methods}))
    return folder


@pytest.fixture
def lgg_cv():
    spec = importlib.util.spec_from_file_location("lgg_cv", REPO / "benchmarks" / "lgg_cv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def two_folds(tmp_path):
    return _fake_fold(tmp_path / "a", ["p1", "p2"], 0.6, 10), _fake_fold(tmp_path / "b", ["p3", "p4"], 0.7, 30)


def test_cross_validation_table_pools_slices_and_refuses_overlapping_folds(lgg_cv, two_folds, tmp_path, capsys):
    a, b = two_folds
    assert lgg_cv.main([str(a), str(b)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| AME-CAM (mean"))
    # pooled over the 40 slices: (0.6 * 10 + 0.7 * 30) / 40; volume over the 4 patients; one fold of two reaches 0.65
    assert row == "| AME-CAM (mean of M1-M4 and Mf) | 0.600 | 0.700 | 0.675 (40 slices) | 0.325 (4 patients) | 1 of 2 |"
    c = _fake_fold(tmp_path / "c", ["p4", "p5"], 0.5, 5)
    assert lgg_cv.main([str(a), str(b), str(c)]) == 2
    assert "p4 is held out by both" in capsys.readouterr().err
    assert lgg_cv.main([str(a), str(tmp_path / "typo")]) == 2  # a wrong folder: one line, no traceback
    assert capsys.readouterr().err == f"{tmp_path / 'typo'}: no summary.json; give the --out folders of benchmarks/lgg.py\n"


def _unet_rows(lgg_cv, folds, capsys, fold, fusion, segmentation="segmentation", options=(), epochs=8, seeds=(0, 0)):
    """Give ``fold`` what benchmarks/segmentation.py leaves in ``segmentation``: the report and the two U-Net bundles
    (``epochs`` each, the pseudo-label one labelled by ``fusion``, trained with ``seeds``); the U-Net rows lgg_cv.py
    prints with ``options``."""
    unet = {"unet_pseudo": {"slice": {"dice": 0.8, "n_dice": 10}, "volume": {"dice": 0.5, "n_dice": 2}},
            "supervised": {"slice": {"dice": 0.9, "n_dice": 10}, "volume": {"dice": 0.7, "n_dice": 2}}}
    bundles = {"unet_pseudo": fold / segmentation / "unet_pseudo", "supervised": fold / segmentation / "unet_supervised"}
    for bundle, seed in zip(bundles.values(), seeds):
        (bundle / "configs").mkdir(parents=True)
        settings = {"epochs": epochs, "seed": seed}
        (bundle / "configs" / "metadata.json").write_text(json.dumps({"amecam_training": {"settings": settings}}))
    (fold / segmentation / "report").mkdir(parents=True)
    report = {"methods": unet, "fusion": fusion, "extra_bundles": {k: str(v) for k, v in bundles.items()}}
    (fold / segmentation / "report" / "report.json").write_text(json.dumps(report))
    assert lgg_cv.main([str(f) for f in folds] + list(options)) == 0
    return [line for line in capsys.readouterr().out.splitlines() if "U-Net" in line]


def test_cross_validation_table_adds_the_unet_rows_where_segmentation_ran(lgg_cv, two_folds, capsys):
    a, b = two_folds
    assert lgg_cv.main([str(a), str(b)]) == 0
    assert "U-Net" not in capsys.readouterr().out  # no fold ran benchmarks/segmentation.py: no U-Net rows
    assert _unet_rows(lgg_cv, two_folds, capsys, a, "mean") == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed 0 | 0.800 | not run | not every fold | not every fold | 1 of 1 |",
        "| supervised U-Net (expert masks; upper bound), 8 epochs, seed 0 | 0.900 | not run | not every fold | not every fold | 1 of 1 |"]
    # a fold whose U-Net learnt from Mf (fusion attention) is its own row, not pooled with the fusion-mean fold
    assert _unet_rows(lgg_cv, two_folds, capsys, b, "attention")[:2] == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed 0 | 0.800 | not run | not every fold | not every fold | 1 of 1 |",
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion attention), 8 epochs, seed 0 | not run | 0.800 | not every fold | not every fold | 1 of 1 |"]


def test_cross_validation_table_reads_the_unets_of_another_schedule_with_segmentation(lgg_cv, two_folds, capsys):
    a, b = two_folds  # segmentation.py --out a/segmentation_e20 (a second schedule beside the first)
    assert _unet_rows(lgg_cv, two_folds, capsys, a, "mean", "segmentation_e20", epochs=20) == []  # none in the default folder
    # fold b's U-Nets trained 8 epochs: rows of their own, not pooled with fold a's 20-epoch ones
    assert _unet_rows(lgg_cv, two_folds, capsys, b, "mean", "segmentation_e20", ["--segmentation", "segmentation_e20"]) == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 20 epochs, seed 0 | 0.800 | not run | not every fold | not every fold | 1 of 1 |",
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed 0 | not run | 0.800 | not every fold | not every fold | 1 of 1 |",
        "| supervised U-Net (expert masks; upper bound), 20 epochs, seed 0 | 0.900 | not run | not every fold | not every fold | 1 of 1 |",
        "| supervised U-Net (expert masks; upper bound), 8 epochs, seed 0 | not run | 0.900 | not every fold | not every fold | 1 of 1 |"]


def test_cross_validation_table_labels_each_unet_with_the_seed_in_its_own_bundle(lgg_cv, two_folds, capsys):
    a, b = two_folds
    _unet_rows(lgg_cv, two_folds, capsys, a, "attention")
    # fold b: the pseudo-label U-Net trained with --seed 1, the supervised one copied in from a seed-0 run (as 2k does)
    assert _unet_rows(lgg_cv, two_folds, capsys, b, "attention", seeds=(1, 0)) == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion attention), 8 epochs, seed 0 | 0.800 | not run | not every fold | not every fold | 1 of 1 |",
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion attention), 8 epochs, seed 1 | not run | 0.800 | not every fold | not every fold | 1 of 1 |",
        "| supervised U-Net (expert masks; upper bound), 8 epochs, seed 0 | 0.900 | 0.900 | 0.900 (20 slices) | 0.700 (4 patients) | 2 of 2 |"]
    # the bundles moved after evaluation: found beside the report, where segmentation.py writes them
    report = b / "segmentation" / "report" / "report.json"
    content = json.loads(report.read_text())
    content["extra_bundles"] = {k: f"elsewhere/{v.rsplit('/', 1)[-1]}" for k, v in content["extra_bundles"].items()}
    report.write_text(json.dumps(content))
    assert lgg_cv.main([str(a), str(b)]) == 0
    assert "8 epochs, seed 1 | not run | 0.800 |" in capsys.readouterr().out


@pytest.mark.parametrize("text, reason", [("{not json", "not a readable JSON file"), ("[1, 2]", "not a JSON object"),
                                          ('{"n_slices": 3}', "no methods; give the reports of amecam evaluate")])
def test_cross_validation_table_names_an_unreadable_report_in_one_line(lgg_cv, two_folds, capsys, text, reason):
    a, b = two_folds
    (b / "report" / "report.json").write_text(text)
    assert lgg_cv.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{b / 'report' / 'report.json'}: {reason}") and err.count("\n") == 1


def test_cross_validation_table_refuses_a_summary_without_test_cases(lgg_cv, two_folds, capsys):
    a, b = two_folds
    (b / "summary.json").write_text('{"fold": 1}')
    assert lgg_cv.main([str(a), str(b)]) == 2
    assert capsys.readouterr().err == f"{b / 'summary.json'}: no list of test_cases; give the --out folders of benchmarks/lgg.py\n"


def _train_seed(fold, seed):
    """Record in ``fold``'s summary.json what lgg.py writes for ``--seed 0 --train_seed seed``."""
    summary = json.loads((fold / "summary.json").read_text())
    (fold / "summary.json").write_text(json.dumps({**summary, "seed": 0, "train_seed": seed}))


def _last_rows(lgg_cv, capsys, argv, marker, n):
    """The last ``n`` lines holding ``marker`` that lgg_cv.py prints for ``argv`` (it must succeed)."""
    assert lgg_cv.main([str(a) for a in argv]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if marker in line][-n:]


def test_cross_validation_repeated_with_another_training_seed_gives_each_set_and_their_mean(lgg_cv, two_folds, tmp_path, capsys):
    a, b = two_folds  # training seed 0 (lgg.py's --seed, no --train_seed recorded)
    a1 = _fake_fold(tmp_path / "a1", ["p1", "p2"], 0.8, 10)
    b1 = _fake_fold(tmp_path / "b1", ["p3", "p4"], 0.5, 30)
    for fold in (a, b):  # lgg.py without --train_seed: no train_seed recorded, the run trained with --seed
        (fold / "summary.json").write_text(json.dumps({**json.loads((fold / "summary.json").read_text()), "seed": 0}))
    _train_seed(a1, 1)
    _train_seed(b1, 1)
    assert lgg_cv.main([str(a), str(b), "--repeat", str(a1), str(b1)]) == 0
    out = capsys.readouterr().out
    assert "4 patients held out once each over 2 folds (training seed 0)" in out
    assert "4 patients held out once each over 2 folds (training seed 1)" in out
    # seed 0 pools to 0.675 (the first test), seed 1 to (0.8 * 10 + 0.5 * 30) / 40 = 0.575; their mean 0.625
    assert "| AME-CAM (mean of M1-M4 and Mf) | 0.800 | 0.500 | 0.575 (40 slices) | 0.325 (4 patients) | 1 of 2 |" in out
    assert out.splitlines()[-3:] == [
        "| slice Dice | training seed 0 | training seed 1 | mean over the 2 sets | standard deviation over the sets | sets >= 0.65 |",
        "|---|---|---|---|---|---|",
        "| AME-CAM (mean of M1-M4 and Mf) | 0.675 | 0.575 | 0.625 | 0.071 | 1 of 2 |"]
    # a repeat that holds out other patients is not the same cross-validation: one line, status 2
    c = _fake_fold(tmp_path / "c", ["p5", "p6"], 0.5, 5)
    assert lgg_cv.main([str(a), str(b), "--repeat", str(a1), str(c)]) == 2
    assert capsys.readouterr().err == (f"--repeat {a1} {c}: holds out other patients than the first set of folds; "
                                       "a repeat must train the same folds again\n")


def test_cross_validation_repeat_matches_the_unet_trained_with_its_own_runs_seed(lgg_cv, two_folds, tmp_path, capsys):
    a, b = two_folds
    a1 = _fake_fold(tmp_path / "a1", ["p1", "p2"], 0.8, 10)
    b1 = _fake_fold(tmp_path / "b1", ["p3", "p4"], 0.5, 30)
    for fold, seed in ((a, 0), (b, 0), (a1, 1), (b1, 1)):
        _train_seed(fold, seed)
        # train-seg's default: the pseudo-label U-Net takes its AME-CAM run's seed; the supervised one is seed 0 in both
        _unet_rows(lgg_cv, [fold], capsys, fold, "mean", seeds=(seed, 0))
    assert _last_rows(lgg_cv, capsys, [a, b, "--repeat", a1, b1], "U-Net", 2) == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed of its AME-CAM run "
        "(train-seg's default) | 0.800 | 0.800 | 0.800 | 0.000 | 2 of 2 |",
        "| supervised U-Net (expert masks; upper bound), 8 epochs, seed 0 | 0.900 | 0.900 | 0.900 | 0.000 | 2 of 2 |"]
    # pseudo-label U-Nets trained with a seed other than their run's (train-seg --seed 0) are another recipe: no mean
    for fold in (a1, b1):
        metadata = fold / "segmentation" / "unet_pseudo" / "configs" / "metadata.json"
        metadata.write_text(json.dumps({"amecam_training": {"settings": {"epochs": 8, "seed": 0}}}))
    assert _last_rows(lgg_cv, capsys, [a, b, "--repeat", a1, b1], "pseudo-labels", 2) == [
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed of its AME-CAM run "
        "(train-seg's default) | 0.800 | not run | not every set | not every set | not every set |",
        "| U-Net on AME-CAM's pseudo-labels (labelled by fusion mean), 8 epochs, seed 0 | not run | 0.800 | not every set | not every set | not every set |"]


def test_cross_validation_table_adds_the_flip_tta_rows_and_refuses_a_report_in_the_wrong_folder(lgg_cv, two_folds, capsys):
    """benchmarks/tta.py's report_crf_tta gives rows of their own; a report scored with --augment where the plain rows are
    read, or without it where the TTA rows are, is refused rather than mislabelled."""
    a, b = two_folds
    for fold, dice in ((a, 0.7), (b, 0.8)):
        (fold / "report_crf_tta").mkdir()
        methods = {"amecam+crf": {"slice": {"dice": dice, "n_dice": 10}, "volume": {"dice": 0.5, "n_dice": 2}}}
        (fold / "report_crf_tta" / "report.json").write_text(json.dumps({"methods": methods, "tta": "flip"}))
    assert lgg_cv.main([str(a), str(b)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| AME-CAM")]
    assert rows == ["| AME-CAM (mean of M1-M4 and Mf) | 0.600 | 0.700 | 0.675 (40 slices) | 0.325 (4 patients) | 1 of 2 |",
                    "| AME-CAM + DenseCRF, flip TTA | 0.700 | 0.800 | 0.750 (20 slices) | 0.500 (4 patients) | 2 of 2 |"]
    (a / "report_crf_tta" / "report.json").write_text(json.dumps({"methods": {}, "tta": "none"}))
    assert lgg_cv.main([str(a), str(b)]) == 2
    assert "report_crf_tta/report.json: scored without --augment, but the rows of report_crf_tta/ are with --augment flip" in capsys.readouterr().err
    (a / "report" / "report.json").write_text(json.dumps({"methods": {}, "tta": "flip"}))
    assert lgg_cv.main([str(a), str(b)]) == 2
    assert "report/report.json: scored with --augment, but the rows of report/ are without it" in capsys.readouterr().err


def test_tta_compare_prints_each_runs_change_and_refuses_reports_the_wrong_way_round(tmp_path, capsys):
    tta = _benchmark("tta")

    def report(folder, name, dice, augment):
        (folder / name).mkdir(parents=True)
        methods = {m: {"slice": {"dice": dice + 0.01 * i}, "volume": {"dice": dice / 2}} for i, m in enumerate(tta.COMPARED)}
        content = {"methods": methods, "tta": augment, "classifier_slice_auc": dice, "seconds": {"maps": 10 * dice}}
        (folder / name / "report.json").write_text(json.dumps(content))

    run = tmp_path / "fold"
    report(run, "report_crf", 0.6, "none")
    report(run, tta.REPORT, 0.63, "flip")
    tta.compare([run])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| fold | +3.0 | +3.0 | +3.0 | +3.0 | +1.5 | 0.600 -> 0.630 | 6 -> 6 |"
    assert lines[3].startswith("| higher with flips | 1 of 1 | 1 of 1 |")
    (run / tta.REPORT / "report.json").write_text((run / "report_crf" / "report.json").read_text())
    with pytest.raises(SystemExit, match="must be scored with --augment flip"):
        tta.compare([run])
