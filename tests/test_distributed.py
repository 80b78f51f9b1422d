"""Training with torchrun and DistributedDataParallel (bundle/scripts/distributed.py), on CPU processes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from amecam_bundle.scripts.distributed import Processes

from .conftest import bundle_torchrun


def test_two_processes_train_in_step(tmp_path, tiny_bundle):
    """The bundle's own command, torchrun with two processes, trains stage 1 and the U-Net: every process takes
    half of each epoch, DDP averages the gradients (the trainers check at the end that both processes hold the
    same weights, and fail if not), and process 0 alone writes the weights, which the networks load."""
    root = tmp_path / "run"
    root.mkdir()
    for name in ("configs", "scripts", "slices"):
        shutil.copytree(tiny_bundle / name, root / name)
    runs = (("train_stage1.yaml", "--epochs", "2"),
            ("train_seg.yaml", "--epochs", "1", "--label_source", "masks", "--models_dir", str(tmp_path / "unet")))
    for config, *args in runs:
        proc = bundle_torchrun(root, config, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 processes (batch 4 each)" in proc.stdout + proc.stderr
    stage1 = json.loads((root / "models" / "stage1.json").read_text())
    assert stage1["processes"] == json.loads((tmp_path / "unet" / "seg.json").read_text())["processes"] == 2
    assert [record["epoch"] for record in stage1["history"]] == [1, 2]
    from amecam_bundle.scripts.data import SliceSet
    from amecam_bundle.scripts.networks import MultiExitResNet, SegmentationNet

    labels = SliceSet(root / "slices", "train").labels
    balanced = 2 * min(int((labels == 1).sum()), int((labels == 0).sum()))
    # the processes' slices counted together: an epoch is every slice of the balanced draw, not half of them
    record = stage1["history"][0]
    assert round(record["train_slices_per_s"] * record["seconds"]) == balanced

    for network, weights in ((MultiExitResNet(in_channels=1), root / "models" / "classifier.pt"),
                             (SegmentationNet(in_channels=1), tmp_path / "unet" / "model.pt")):
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        assert not any(path.name.startswith(".") for path in weights.parent.iterdir())  # no half-written file left


def test_two_processes_train_as_one_process_with_their_batches_together(tmp_path, tiny_bundle):
    """Without augmentation, two processes of batch 4 take the same steps as one process of batch 8: every norm
    is per image, process r's k-th batch is positions r, r+2, ... of the one process's k-th batch, and DDP's
    averaged gradient is the batch-8 gradient. So the epoch's loss and the weights agree up to float rounding
    (which Adam amplifies to about a learning rate per step where a gradient is near zero)."""
    from amecam_cli.workflow import run_config

    runs = {}
    for name in ("ddp", "single"):
        root = runs[name] = tmp_path / name
        root.mkdir()
        for folder in ("configs", "scripts", "slices"):
            shutil.copytree(tiny_bundle / folder, root / folder)
    proc = bundle_torchrun(runs["ddp"], "train_stage1.yaml", "--epochs", "1", "--trainer#augmentation", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_config(runs["single"], "train_stage1.yaml", bundle_root=str(runs["single"]), epochs=1, batch_size=8, device="cpu",
               progress=False, **{"trainer#augmentation": False})
    losses = [json.loads((runs[name] / "models" / "stage1.json").read_text())["history"][0]["train_loss"] for name in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3), losses
    weights = [torch.load(runs[name] / "models" / "classifier.pt", map_location="cpu", weights_only=True) for name in runs]
    gaps = [(weights[0][key].float() - weights[1][key].float()).abs() for key in weights[0] if weights[0][key].is_floating_point()]
    assert max(float(gap.max()) for gap in gaps) < 0.02  # 5 Adam steps of learning rate 0.001
    assert float(torch.cat([gap.flatten() for gap in gaps]).mean()) < 1e-3


def test_shards_are_disjoint_and_equal():
    processes = Processes("false", "cpu")
    order = np.arange(11) * 3
    assert np.array_equal(processes.shard(order), order)  # alone: the whole epoch
    processes.enabled, processes.world_size = True, 3
    shares = []
    for rank in range(3):
        processes.rank = rank
        shares.append(processes.shard(order))
    assert [len(share) for share in shares] == [3, 3, 3]  # DDP needs as many batches in every process
    assert sorted(np.concatenate(shares).tolist()) == order[:9].tolist()


def test_distributed_without_torchrun_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="distributed training must be started by torchrun"):
        Processes("true", "cpu")
    with pytest.raises(ValueError, match="distributed must be true or false"):
        Processes("sometimes", "cpu")
    assert not Processes("auto", "cpu").enabled
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: alone unless asked (then DDP over one)
    assert not Processes("auto", "cpu").enabled
