from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from amecam_cli.errors import AmecamError
from amecam_cli.synth import SHAPE, synthesize_case, synthesize_cohort


def test_cohort_layout_types_and_labels(synth_cohort):
    case = synth_cohort / "SYN_001"
    for modality in ("flair", "t1", "t1ce", "t2"):
        image = nib.load(str(case / f"SYN_001_{modality}.nii.gz"))
        assert image.shape == SHAPE and image.get_data_dtype() == np.int16
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    seg = np.asanyarray(nib.load(str(case / "SYN_001_seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg > 0).sum() > 1000
    info = json.loads((synth_cohort / "cohort.json").read_text(encoding="utf-8"))
    assert info["seed"] == 7 and "not patient data" in info["note"].lower()


def test_deterministic_per_seed_and_case(synth_cohort):
    volumes, seg = synthesize_case(7, 0)
    on_disk = np.asanyarray(nib.load(str(synth_cohort / "SYN_000" / "SYN_000_flair.nii.gz")).dataobj)
    np.testing.assert_array_equal(volumes["flair"], on_disk)
    other, _ = synthesize_case(8, 0)
    assert not np.array_equal(other["flair"], on_disk)


def test_modality_contrast_of_tumour_and_lookalikes(synth_cohort):
    seg = np.asanyarray(nib.load(str(synth_cohort / "SYN_000" / "SYN_000_seg.nii.gz")).dataobj)
    load = lambda m: np.asanyarray(nib.load(str(synth_cohort / "SYN_000" / f"SYN_000_{m}.nii.gz")).dataobj).astype(float)  # noqa: E731
    flair, t1 = load("flair"), load("t1")
    brain = flair > 0
    normal = brain & (seg == 0)
    # edema is bright on FLAIR and dark on T1 relative to normal tissue
    assert np.median(flair[seg == 2]) > 1.5 * np.median(flair[normal])
    assert np.median(t1[seg == 2]) < np.median(t1[normal])
    # look-alikes: some non-tumour voxels are as bright on FLAIR as the edema
    assert (flair[normal] > np.median(flair[seg == 2])).sum() > 50


def test_resume_and_refusal(tmp_path, synth_cohort):
    with pytest.raises(AmecamError, match="holds a cohort made with seed 7"):
        synthesize_cohort(synth_cohort, n_cases=2, seed=8, progress=False)
    (tmp_path / "junk.txt").write_text("x", encoding="utf-8")
    with pytest.raises(AmecamError, match="not empty and holds no synthetic cohort"):
        synthesize_cohort(tmp_path, n_cases=1, progress=False)
    with pytest.raises(AmecamError, match="--n_cases must be a whole number >= 1"):
        synthesize_cohort(tmp_path / "new", n_cases=0, progress=False)
    stamp = (synth_cohort / "SYN_000" / "SYN_000_t2.nii.gz").stat().st_mtime_ns
    synthesize_cohort(synth_cohort, n_cases=2, seed=7, progress=False)  # complete: nothing regenerated
    assert (synth_cohort / "SYN_000" / "SYN_000_t2.nii.gz").stat().st_mtime_ns == stamp


def test_workers_make_the_same_cohort(tmp_path, synth_cohort):
    with pytest.raises(AmecamError, match="--workers must be a whole number >= 1"):
        synthesize_cohort(tmp_path / "none", n_cases=1, workers=0, progress=False)
    out = tmp_path / "parallel"
    folders = synthesize_cohort(out, n_cases=2, seed=7, workers=2, progress=False)
    assert [f.name for f in folders] == ["SYN_000", "SYN_001"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial case left
    for name in ("SYN_000/SYN_000_t1ce.nii.gz", "SYN_001/SYN_001_seg.nii.gz"):
        made = np.asanyarray(nib.load(str(out / name)).dataobj)
        assert np.array_equal(made, np.asanyarray(nib.load(str(synth_cohort / name)).dataobj))
