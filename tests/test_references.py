"""Training-free reference rows (amecam_cli/references.py) in amecam evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amecam_cli.cli import main
from amecam_cli.references import otsu_threshold

from .conftest import save_nifti


def _known_case(root, name="K"):
    """Brain at 100, a labelled tumour (8x8 on 4 slices) and an unlabelled look-alike (4x4) both at 200."""
    shape = (32, 32, 12)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    brain = ((x - 16) / 13.4) ** 2 + ((y - 16) / 13.4) ** 2 + ((z - 6) / 7.2) ** 2 < 1
    image = np.where(brain, 100, 0).astype(np.int16)
    seg = np.zeros(shape, np.uint8)
    image[10:18, 12:20, 4:8] = 200
    seg[10:18, 12:20, 4:8] = 1
    image[20:24, 8:12, 4:8] = 200  # look-alike: as bright as the tumour, not tumour
    save_nifti(root / name / f"{name}_flair.nii.gz", image)
    save_nifti(root / name / f"{name}_seg.nii.gz", seg)


def test_threshold_and_otsu_rows_have_the_known_dice(tmp_path, tiny_bundle, capsys):
    _known_case(tmp_path / "data")
    code = main(["evaluate", "--data_dir", str(tmp_path / "data"), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"),
                 "--methods", "threshold,otsu,amecam", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    expected = 2 * 64 / (64 + 64 + 16)  # per tumour slice: the look-alike is the only error
    for row in ("threshold", "otsu"):
        assert report["methods"][row]["slice"]["n"] == 4
        assert report["methods"][row]["slice"]["dice"] == pytest.approx(expected)
        assert report["methods"][row]["volume_ungated"]["dice"] == pytest.approx(2 * 256 / (256 + 320))
        assert set(report["methods"][row]) == set(report["methods"]["amecam"])  # same keys as the CAM rows
    assert report["methods"]["threshold"]["slice"]["iou"] == pytest.approx(64 / 80)


def test_threshold_level_and_unknown_rows(tmp_path, tiny_bundle, capsys):
    _known_case(tmp_path / "data")
    code = main(["evaluate", "--data_dir", str(tmp_path / "data"), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"),
                 "--methods", "threshold", "--threshold_level", "1.01", "--device", "cpu"])
    assert code == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["methods"]["threshold"]["slice"]["dice"] == 0.0
    code = main(["evaluate", "--data_dir", str(tmp_path / "data"), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r2"),
                 "--methods", "thresh"])
    assert code == 2 and "rows without training: threshold, otsu" in capsys.readouterr().err


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (100.0, 200.0), (-3.0, 5.0)])
def test_otsu_separates_two_levels(low, high):
    values = np.concatenate([np.full(900, low), np.full(100, high)])
    cut = otsu_threshold(values)
    assert low < cut <= high
    assert ((values >= cut) == (values == high)).all()
