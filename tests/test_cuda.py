"""The CUDA path end to end: train, infer, verify, evaluate, explain, train-seg and the bundle run on a GPU.

Skipped where torch sees no CUDA device (CI has none): run ``pytest tests/test_cuda.py`` on a GPU machine.
The GPU runs bfloat16 autocast, so its maps are compared with the CPU's within a tolerance, not bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from amecam_cli.cli import main

from .conftest import TINY_SETTINGS, bundle_torchrun, planted_case, save_nifti, write_brats_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory):
    """A bundle trained on the GPU, like conftest's tiny_bundle on the CPU."""
    from amecam_cli.training import train_bundle

    root = tmp_path_factory.mktemp("cuda")
    data = root / "data"
    for i in range(6):
        write_brats_case(data, f"CASE_{i:02d}", modalities=("flair",), seed=i)
    train_bundle(data, root / "run", settings={**TINY_SETTINGS, "device": "cuda"}, progress=False)
    return root / "run"


def test_weights_trained_on_the_gpu_load_without_one(cuda_bundle):
    """A plain torch.load (no map_location) must work on a CPU-only machine: every saved tensor is on the CPU."""
    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            return [obj]
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
        return [t for value in values for t in tensors(value)]

    saved = sorted((cuda_bundle / "models").rglob("*.pt"))
    assert {p.name for p in saved} >= {"model.pt", "classifier.pt", "stage1.pt", "stage2.pt"}  # weights and checkpoints
    for path in saved:
        found = tensors(torch.load(path, weights_only=False))
        assert found, path
        assert all(t.device.type == "cpu" for t in found), path
    summary = json.loads((cuda_bundle / "models" / "stage1.json").read_text(encoding="utf-8"))
    assert all(np.isfinite(h["train_loss"]) for h in summary["history"])


def test_gpu_and_cpu_inference_agree(tmp_path, cuda_bundle):
    from amecam_cli.inference import run_inference

    image, _ = planted_case(seed=3)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    outputs = {}
    for tag, device in (("gpu", "cuda"), ("cpu", "cpu")):
        run_inference(src, tmp_path / f"{tag}_mask.nii.gz", cuda_bundle, save_cam=tmp_path / f"{tag}_cam.nii.gz",
                      device=device, progress=False)
        outputs[tag] = [np.asanyarray(nib.load(str(tmp_path / f"{tag}_{kind}.nii.gz")).dataobj) for kind in ("mask", "cam")]
    (gpu_mask, gpu_cam), (cpu_mask, cpu_cam) = outputs["gpu"], outputs["cpu"]
    assert gpu_mask.shape == image.shape and gpu_mask.dtype == np.uint8
    # bfloat16 autocast on the GPU: close maps, not equal ones (a slice near the gate may still flip)
    mapped = (gpu_cam > 0) | (cpu_cam > 0)
    assert mapped.any() and np.abs(gpu_cam - cpu_cam)[mapped].mean() < 0.02
    if cpu_mask.any():
        overlap = 2 * (gpu_mask & cpu_mask).sum() / (gpu_mask.sum() + cpu_mask.sum())
        assert overlap >= 0.9


def test_verify_and_bundle_run_on_the_gpu(tmp_path, capsys, cuda_bundle):
    code = main(["verify", str(cuda_bundle), "--device", "cuda"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "FAIL" not in out
    image, _ = planted_case(seed=5)
    src = save_nifti(tmp_path / "vol_flair.nii.gz", image.astype(np.int16))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cuda_bundle / "configs" / "inference.yaml"),
           "--bundle_root", str(cuda_bundle), "--image", str(src), "--output", str(tmp_path / "vol_mask.nii.gz"), "--device", "cuda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert nib.load(str(tmp_path / "vol_mask.nii.gz")).shape == image.shape


def test_evaluate_cam_and_train_seg_on_the_gpu(tmp_path, capsys, cuda_bundle):
    data = tmp_path / "data"
    for i in range(6):
        write_brats_case(data, f"CASE_{i:02d}", modalities=("flair",), seed=10 + i)
    code = main(["evaluate", "--data_dir", str(data), "--bundle", str(cuda_bundle), "-o", str(tmp_path / "r"),
                 "--methods", "amecam,cam,gradcam,gradcampp,layercam,scorecam,hirescam,exit1", "--budget", "4", "--device", "cuda"])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert set(report["methods"]) == {"amecam", "cam", "gradcam", "gradcampp", "layercam", "scorecam", "hirescam", "exit1"}
    assert all(0 <= row[level]["dice"] <= 1 for row in report["methods"].values() for level in ("slice", "volume"))
    image, _ = planted_case(seed=2)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    code = main(["cam", str(src), "-o", str(tmp_path / "g.nii.gz"), "--bundle", str(cuda_bundle), "--method", "gradcam", "--device", "cuda"])
    _, err = capsys.readouterr()
    assert code == 0, err
    code = main(["train-seg", "--bundle", str(cuda_bundle), "--data_dir", str(data), "-o", str(tmp_path / "seg"), "--epochs", "1",
                 "--batch_size", "4", "--device", "cuda"])
    _, err = capsys.readouterr()
    assert code == 0, err
    code = main(["explain", str(src), "-o", str(tmp_path / "e.nii.gz"), "--bundle", str(tmp_path / "seg"), "--device", "cuda"])
    _, err = capsys.readouterr()
    assert code == 0, err


def test_torchrun_trains_with_nccl_on_the_gpus(tmp_path, cuda_bundle):
    """configs/multi_gpu_train.yaml under torchrun on CUDA: NCCL, one process per GPU (two when there are two)."""
    import shutil

    root = tmp_path / "run"
    for name in ("configs", "scripts", "slices"):
        shutil.copytree(cuda_bundle / name, root / name)
    nproc = min(2, torch.cuda.device_count())
    proc = bundle_torchrun(root, "train_stage1.yaml", "--epochs", "1", nproc=nproc, device="cuda", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "models" / "stage1.json").read_text())
    assert summary["processes"] == nproc
    assert f"device cuda:0, {nproc} processes" in proc.stdout + proc.stderr
