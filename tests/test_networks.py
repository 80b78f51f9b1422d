"""bundle/scripts/networks.py: the multi-exit classifier, the aggregator and the inference wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks.nets.resnet import ResNetBlock

from amecam_bundle.scripts.losses import MultiExitBCELoss
from amecam_bundle.scripts.networks import (
    AMECAMNet,
    AttentionAggregator,
    FastInstanceNorm2d,
    MultiExitResNet,
    SegmentationNet,
    brain_region,
    minmax_per_image,
)
from amecam_bundle.scripts.train import deletion_scores, resolve_attention_polarity, resolve_exit_polarity


def test_instance_norm_reaches_every_block_and_shortcut():
    net = MultiExitResNet(in_channels=2)
    blocks = [m for m in net.modules() if isinstance(m, ResNetBlock)]
    assert len(blocks) == 8  # ResNet-18: 2 blocks in each of 4 stages
    for block in blocks:
        assert isinstance(block.bn1, nn.InstanceNorm2d) and isinstance(block.bn2, nn.InstanceNorm2d)
        if block.downsample is not None:
            assert isinstance(block.downsample[1], nn.InstanceNorm2d)
    assert isinstance(net.stem[1], nn.InstanceNorm2d)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) == 1 + 16 + 3
    assert all(type(m) is FastInstanceNorm2d for m in net.modules() if isinstance(m, nn.InstanceNorm2d))


def test_the_u_net_and_the_aggregator_use_the_fast_instance_norm_too():
    for net in (SegmentationNet(in_channels=1), AttentionAggregator()):
        norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
        assert norms and all(type(m) is FastInstanceNorm2d for m in norms)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fast_instance_norm_is_instance_norm_in_value_and_gradient(memory_format):
    torch.manual_seed(0)
    reference = nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.bias.uniform_(-1.0, 1.0)
    fast = FastInstanceNorm2d(6, affine=True)
    fast.load_state_dict(reference.state_dict())  # same parameter names both ways
    x = (torch.randn(3, 6, 9, 7) * 4 + 2).contiguous(memory_format=memory_format)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [reference(xs[0]), fast(xs[1])]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(outputs[0])
    for out in outputs:
        (out * upstream).sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast(x[0]), reference(x[0]), atol=1e-5, rtol=1e-5)  # unbatched (C, H, W) input


def test_every_exit_and_every_stage_receives_gradients():
    torch.manual_seed(0)
    net = MultiExitResNet(in_channels=1)
    logits, maps = net(torch.rand(4, 1, 64, 64))
    assert logits.shape == (4, 4)
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    MultiExitBCELoss()(logits, torch.tensor([0, 1, 0, 1])).backward()
    for k, head in enumerate(net.exits):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, f"exit {k + 1} got no gradient"
    for k, stage in enumerate(net.stages):
        grads = [p.grad.abs().sum() for p in stage.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, f"stage {k + 1} got no gradient"


def test_exit_logit_is_the_mean_of_its_map():
    net = MultiExitResNet(in_channels=1).eval()
    logits, maps = net(torch.rand(2, 1, 64, 64))
    torch.testing.assert_close(logits, torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1))


def test_minmax_per_image_is_independent_per_map():
    maps = torch.stack([torch.arange(4.0).view(2, 2), 10 + 2 * torch.arange(4.0).view(2, 2)])[:, None]
    out = minmax_per_image(maps)
    expected = (torch.arange(4.0) / 3).view(2, 2)
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 0], expected, atol=1e-5, rtol=0)


def test_inference_network_has_one_output_in_unit_range():
    net = AMECAMNet(in_channels=3).eval()
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[:, 1], out[:, 1, :1, :1].expand(-1, 64, 64))  # probability broadcast
    assert torch.allclose(out[:, 0].flatten(1).amax(1), torch.ones(2), atol=1e-3)  # min-max: 1 is reached
    assert torch.allclose(out[:, 0].flatten(1).amin(1), torch.zeros(2), atol=1e-3)


def test_gated_forward_computes_maps_once_and_only_for_tumour_slices():
    from amecam_bundle.scripts.inference import gated_output

    torch.manual_seed(0)
    net = AMECAMNet(in_channels=1, stem_stride=1).eval()
    x = torch.rand(6, 1, 64, 64) * (torch.rand(6, 1, 1, 1) + 0.5)
    with torch.no_grad():
        full = net(x)
        probability = full[:, 1, 0, 0]
        threshold = float(probability.median())  # some slices on each side
        calls = []
        hook = net.classifier.register_forward_hook(lambda *args: calls.append(1))
        gated = gated_output(net, x, threshold)
        hook.remove()
    keep = probability >= threshold
    assert 0 < int(keep.sum()) < 6 and len(calls) == 1  # one classifier pass for all six slices
    assert torch.allclose(gated[:, 1], full[:, 1])
    assert torch.allclose(gated[keep, 0], full[keep, 0], atol=1e-5)
    assert torch.count_nonzero(gated[~keep, 0]) == 0


def test_predictor_skips_maps_of_normal_slices_in_one_pass():
    from amecam_bundle.scripts.inference import VolumePredictor

    torch.manual_seed(1)
    net = AMECAMNet(in_channels=1).eval()
    x = torch.rand(5, 1, 64, 64) * (torch.rand(5, 1, 1, 1) + 0.5)
    with torch.no_grad():
        probability = net(x)[:, 1, 0, 0]
    threshold = float(probability.median())
    predictor = VolumePredictor(net, image_size=64, device="cpu", batch_size=2, probability_threshold=threshold)
    calls = []
    hook = net.classifier.register_forward_hook(lambda *args: calls.append(1))
    every = predictor.network_output(x, all_maps=True)
    n_full = len(calls)
    gated = predictor.network_output(x, all_maps=False)
    hook.remove()
    keep = every[:, 1, 0, 0] >= threshold
    assert n_full == 3 and len(calls) - n_full == 3  # batches of 2: one classifier pass per batch either way
    assert torch.allclose(gated[keep], every[keep], atol=1e-5)
    assert torch.count_nonzero(gated[~keep, 0]) == 0 and torch.allclose(gated[:, 1], every[:, 1])


def test_predictor_batch_size_defaults_per_device_and_does_not_change_the_output():
    from amecam_bundle.scripts.inference import DEFAULT_BATCH_SIZE, VolumePredictor

    torch.manual_seed(2)
    net = AMECAMNet(in_channels=1).eval()
    x = torch.rand(11, 1, 64, 64)
    default = VolumePredictor(net, image_size=64, device="cpu")
    assert default.batch_size == DEFAULT_BATCH_SIZE["cpu"] < 11
    # channels-last weights, so that activations after the one-channel input stay channels-last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    large = VolumePredictor(net, image_size=64, device="cpu", batch_size=64)
    assert large.batch_size == 64
    # every norm is per image, so how the slices are batched changes nothing beyond float rounding (the
    # channels-last convolutions pick their kernels by batch size: differences of ~2e-5 on maps in [0, 1])
    assert torch.allclose(default.network_output(x), large.network_output(x), atol=1e-4)


def _blob(size=32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 10) ** 2 + (xx - 20) ** 2) < 16).float()


def _brain(size=32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 16) ** 2 + (xx - 16) ** 2) < 15**2).float()


class _PlantedClassifier(nn.Module):
    """Says "tumour" exactly when the blob is bright; its raw exit maps are +blob or -blob."""

    def __init__(self, signs):
        super().__init__()
        self.blob, self.signs = _blob(), torch.tensor(signs, dtype=torch.float32)
        self.register_buffer("exit_polarity", torch.ones(4))

    def forward(self, x):
        brightness = (x[:, 0] * self.blob).sum(dim=(1, 2)) / self.blob.sum()
        logit = 30 * (brightness - 0.6)
        return logit[:, None].repeat(1, 4), None

    def exit_maps(self, x):
        raw = (self.signs.view(1, 4, 1, 1) * self.blob).expand(x.shape[0], -1, -1, -1)
        oriented = raw * self.exit_polarity.view(1, 4, 1, 1)
        return self(x)[0], minmax_per_image(oriented, brain_region(x))


def _images(n=3):
    x = (0.4 * _brain() + 0.5 * _blob())[None, None].repeat(n, 1, 1, 1)
    return x + 0.01 * torch.rand(n, 1, 32, 32) * _brain()


def test_exit_polarity_is_resolved_by_the_deletion_test():
    classifier = _PlantedClassifier([1, -1, 1, -1])
    x = _images()
    polarity = resolve_exit_polarity(classifier, [(x, None)], torch.device("cpu"))
    assert polarity == [1.0, -1.0, 1.0, -1.0]
    _, maps = classifier.exit_maps(x)
    blob = _blob() > 0
    for k in range(4):  # every oriented map now peaks on the blob: 1 = tumour
        assert maps[0, k][blob].min() > maps[0, k][~blob].max(), k


def test_deletion_scores_drop_when_the_tumour_is_erased():
    classifier = _PlantedClassifier([1, 1, 1, 1])
    x = _images()
    scores = deletion_scores(classifier, x, _blob().expand(3, -1, -1))
    assert (scores["erase_high"] < -2).all() and (scores["erase_low"] > 2).all()  # erasing the blob makes the slice look normal
    assert (scores["keep_high"] > 2).all() and (scores["keep_low"] < -2).all()  # keeping only the blob keeps the tumour


@pytest.mark.parametrize(("flip_fourth_exit", "expected"), [(True, -1.0), (False, 1.0)])
def test_attention_polarity_is_resolved_so_that_1_means_tumour(flip_fourth_exit, expected):
    net = AMECAMNet(in_channels=1)
    net.classifier = _PlantedClassifier([1, 1, 1, 1])
    if flip_fourth_exit:  # the map the aggregator picks marks the background: Mf = 1 - blob
        net.classifier.exit_polarity[3] = -1.0
    last = net.aggregator.net[-1]
    with torch.no_grad():  # make the aggregator pick the fourth map everywhere
        last.weight.zero_()
        last.bias.fill_(-20.0)
        last.bias[3] = 20.0
    x = _images()
    polarity = resolve_attention_polarity(net, [(x, None)], torch.device("cpu"))
    assert polarity == expected and float(net.aggregator.polarity) == expected
    blob = _blob() > 0
    oriented = net.aggregator.oriented(net.grey(x), net.classifier.exit_maps(x)[1])[0, 0]
    assert oriented[blob].min() > oriented[~blob & (_brain() > 0)].max()
    final = net.all_maps(x)["final"][0, 0]
    assert final[blob].min() > final[~blob].max()


def test_maps_are_zero_outside_the_brain():
    net = AMECAMNet(in_channels=1).eval()
    x = torch.rand(2, 1, 64, 64)
    x[:, :, :10] = 0  # no brain in the first ten rows
    out = net.all_maps(x)
    assert out["exits"][:, :, :10].abs().max() == 0 and out["final"][:, :, :10].abs().max() == 0
    assert out["exits"].amax(dim=(2, 3)).min() > 0.99  # each map still spans [0, 1] inside the brain


def test_polarity_survives_a_state_dict_round_trip():
    net = AMECAMNet(in_channels=1)
    net.aggregator.polarity.fill_(-1.0)
    other = AMECAMNet(in_channels=1)
    other.load_state_dict(net.state_dict())
    assert float(other.aggregator.polarity) == -1.0


def test_aggregator_weights_are_a_softmax_over_maps():
    agg = AttentionAggregator()
    w = agg.weights(torch.rand(2, 1, 16, 16), torch.rand(2, 4, 16, 16))
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2, 16, 16))


def test_fusion_attention_makes_mf_the_final_map_and_mean_the_papers_mean():
    from amecam_bundle.scripts.networks import brain_region, minmax_per_image

    torch.manual_seed(3)
    mean = AMECAMNet(in_channels=1).eval()
    attention = AMECAMNet(in_channels=1, fusion="attention").eval()
    attention.load_state_dict(mean.state_dict())  # fusion is not a weight: the same state dict fits both
    x = torch.rand(3, 1, 64, 64)
    x[:, :, :6] = 0  # some background
    with torch.no_grad():
        maps = mean.all_maps(x)
        expected = minmax_per_image(torch.cat([maps["exits"], maps["attention"]], dim=1).mean(dim=1, keepdim=True), brain_region(x))
        assert torch.allclose(maps["final"], expected)
        assert torch.allclose(attention.all_maps(x)["final"], maps["attention"])
        assert torch.allclose(attention(x)[:, 0:1], maps["attention"], atol=1e-6)
        assert not torch.allclose(maps["final"], maps["attention"], atol=1e-3)
        probability, *raw = attention.score(x)
        assert torch.allclose(attention.maps_from_raw(x, *raw), maps["attention"], atol=1e-6)
    with pytest.raises(ValueError, match="fusion must be one of mean, attention, got 'max'"):
        AMECAMNet(fusion="max")
