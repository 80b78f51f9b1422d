"""amecam_cli/cams.py: the CAM family and the AME-CAM rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from amecam_cli.cams import BASELINE_METHODS, METHODS, compute_maps, make_cam, validate_methods
from amecam_cli.evaluation import validate_evaluation_methods
from amecam_cli.errors import AmecamError
from amecam_bundle.scripts.networks import AMECAMNet


class _BlobClassifier(nn.Module):
    """A tiny multi-exit classifier whose tumour logit rises only with bright pixels (the planted blob).

    Stage 1: channel 0 = ReLU(x - 0.5) (bright), channel 1 = ReLU(0.45 - x) (dark, a distractor the score
    ignores), channel 2 = 0.1. Stages 2-4 average-pool. Every exit weights the channels (20, 0, 0).
    """

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(1, 3, 3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1], conv.weight[1, 0, 1, 1] = 1.0, -1.0
            conv.bias.copy_(torch.tensor([-0.5, 0.45, 0.1]))
        self.stages = nn.ModuleList([nn.Sequential(conv, nn.ReLU())] + [nn.Sequential(nn.AvgPool2d(2)) for _ in range(3)])
        self.exits = nn.ModuleList(nn.Conv2d(3, 1, 1) for _ in range(4))
        for head in self.exits:
            with torch.no_grad():
                head.weight.copy_(torch.tensor([20.0, 0.0, 0.0]).view(1, 3, 1, 1))
                head.bias.zero_()

    def forward(self, x):
        maps, out = [], x
        for stage, head in zip(self.stages, self.exits):
            out = stage(out)
            maps.append(head(out))
        return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1), maps


SIZE = 64


def _images(n=3, size=SIZE):
    x = torch.zeros(n, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    brain = ((yy - 32) ** 2 + (xx - 32) ** 2) < 29**2
    x[:, 0][:, brain] = 0.4
    centres = [(16, 40), (40, 18), (44, 44)]
    for i in range(n):
        cy, cx = centres[i % 3]
        x[i, 0, cy - 6 : cy + 6, cx - 6 : cx + 6] = 1.0
    return x, centres


@pytest.mark.parametrize("method", BASELINE_METHODS)
@pytest.mark.parametrize("stage", [1, 4])
def test_each_baseline_peaks_on_the_planted_blob(method, stage):
    model = _BlobClassifier()
    x, centres = _images()
    maps = make_cam(method, model, stage=stage, budget=3)(x)
    assert maps.shape == (3, SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1
    for i, (cy, cx) in enumerate(centres):
        peak = divmod(int(maps[i].argmax()), SIZE)
        assert abs(peak[0] - cy) <= 6 and abs(peak[1] - cx) <= 6, (method, stage, i, peak)
        assert maps[i, cy, cx] > 0.5  # 1 = salient (a 4x4 map at stage 4 is coarse)
    assert maps[:, 0, 0].abs().max() == 0  # outside the brain


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_hooks_are_released_and_a_second_call_is_identical(method):
    model = _BlobClassifier()
    x, _ = _images()
    cam = make_cam(method, model, stage=1, budget=3)
    first = cam(x)
    layer = model.stages[0]
    assert not layer._forward_hooks and not layer._backward_hooks
    torch.testing.assert_close(cam(x), first)


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_batches_give_the_same_maps_as_single_images(method):
    model = _BlobClassifier()
    x, _ = _images()
    cam = make_cam(method, model, stage=1, budget=3)
    together = cam(x)
    alone = torch.cat([cam(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_gradcam_and_hirescam_differ_where_gradients_vary():
    model = _BlobClassifier()
    x, _ = _images(1)
    # at stage 1 the pooled head makes the gradient uniform, so both agree; a non-uniform score breaks that
    model.forward_orig = model.forward

    def peaked(inp):
        logits, maps = model.forward_orig(inp)
        return logits + 5 * maps[0][:, :, 16, 40].view(-1, 1), maps

    model.forward = peaked
    grad = make_cam("gradcam", model, stage=1)(x)
    hires = make_cam("hirescam", model, stage=1)(x)
    assert not torch.allclose(grad, hires, atol=1e-3)


def test_amecam_rows_and_probability_come_from_one_forward_pass():
    torch.manual_seed(0)
    net = AMECAMNet(in_channels=1).eval()
    x = torch.rand(5, 1, 64, 64)
    maps = compute_maps(net, x, METHODS, batch_size=2, budget=4)
    for method in METHODS:
        assert maps[method].shape == (5, 64, 64), method
        assert maps[method].min() >= 0 and maps[method].max() <= 1 + 1e-6, method
    assert maps["probability"].shape == (5,)
    torch.testing.assert_close(maps["amecam"], net.all_maps(x)["final"][:, 0].detach())
    assert int(maps["scorecam_forward_passes"]) > 0


def test_method_names_are_validated():
    assert validate_methods("all") == METHODS
    assert validate_methods("gradcam, amecam") == ("gradcam", "amecam")
    with pytest.raises(AmecamError, match="--method must be one of amecam, exit1.*got 'gradcam2'"):
        validate_methods("gradcam2")
    with pytest.raises(AmecamError, match="^--methods must be one of amecam, .*got 'gradcm' \\(rows without training: threshold, otsu\\)"):
        validate_evaluation_methods("amecam,gradcm")  # evaluate's option is --methods
    with pytest.raises(AmecamError, match="--stage must be 1, 2, 3 or 4"):
        make_cam("gradcam", _BlobClassifier(), stage=5)


def test_cam_is_the_unoriented_deepest_exit_map_and_exit4_the_oriented_one():
    """docs/benchmarks.md 1c explains CAM's near-zero Dice by this: with exit 4's polarity -1 the two rows are complements."""
    torch.manual_seed(0)
    net = AMECAMNet(in_channels=1).eval()
    x, _ = _images(2)
    from amecam_bundle.scripts.networks import brain_region

    brain = brain_region(x)[:, 0].bool()
    maps = compute_maps(net, x, ("cam", "exit4"), batch_size=2)
    torch.testing.assert_close(maps["cam"][brain], maps["exit4"][brain])  # polarity +1: the same map
    with torch.no_grad():
        net.classifier.exit_polarity.fill_(-1.0)
    maps = compute_maps(net, x, ("cam", "exit4"), batch_size=2)
    torch.testing.assert_close((maps["cam"] + maps["exit4"])[brain], torch.ones(int(brain.sum())))
