"""Seg-Grad-CAM and Seg-HiRes-Grad-CAM (amecam_cli/explain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNet

from amecam_cli.errors import AmecamError
from amecam_cli.explain import SegCAM, candidate_layers, default_layer, parse_pixels

SIZE = 32


def _region():
    r = torch.zeros(SIZE, SIZE)
    r[4:16, 4:16] = 1  # the only place whose logits the network lets depend on the input
    return r


class _RegionNet(nn.Module):
    """Tumour logit = 10 * bright(x) inside a known region, a constant elsewhere."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[[[1.0]]], [[[0.0]]]]))
            self.features.bias.copy_(torch.tensor([-0.5, 1.0]))
        self.act = nn.ReLU()
        self.register_buffer("region", _region())

    def forward(self, x):
        a = self.act(self.features(x))
        tumour = 10 * a[:, 0] * self.region
        return torch.stack([-tumour, tumour], dim=1)


def _image(blobs):
    x = torch.zeros(1, 1, SIZE, SIZE)
    for (r0, r1, c0, c1) in blobs:
        x[0, 0, r0:r1, c0:c1] = 1.0
    return x


@pytest.mark.parametrize("hires", [False, True])
def test_both_methods_put_their_mass_where_the_output_depends(hires):
    net = _RegionNet()
    x = _image([(6, 12, 6, 12)])  # a bright blob inside the region
    maps = SegCAM(net, net.act, class_index=1, hires=hires)(x, torch.ones(1, SIZE, SIZE, dtype=torch.bool))
    inside = _region().bool()
    assert maps.max() == pytest.approx(1.0)
    assert maps[0][inside].sum() / maps[0].sum() > 0.99
    assert maps[0, 9, 9] == pytest.approx(1.0)


def test_hires_and_gradcam_differ_on_activations_the_output_ignores():
    net = _RegionNet()
    x = _image([(6, 12, 6, 12), (22, 28, 22, 28)])  # the second blob lies outside the region
    everything = torch.ones(1, SIZE, SIZE, dtype=torch.bool)
    grad = SegCAM(net, net.act, hires=False)(x, everything)[0]
    hires = SegCAM(net, net.act, hires=True)(x, everything)[0]
    # Grad-CAM weights whole channels, so the ignored blob lights up; HiRes only where the gradient lives
    assert grad[24, 24] > 0.9 and hires[24, 24] == 0
    assert hires[9, 9] == pytest.approx(1.0) and grad[9, 9] == pytest.approx(1.0)


def test_point_uses_only_that_pixels_logit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    x = torch.rand(1, 1, SIZE, SIZE)
    point = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    point[0, 10, 20] = True
    hires = SegCAM(net, net[1], hires=True)(x, point)[0]
    support = torch.nonzero(hires > 0)
    assert len(support) > 0
    assert (support[:, 0] - 10).abs().max() <= 1 and (support[:, 1] - 20).abs().max() <= 1  # 3x3 receptive field

    class Noisy(nn.Module):  # same logit at the point, other pixels' logits changed wildly
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            out = self.inner(z)
            noise = torch.zeros_like(out)
            noise[:, :, :5] = 50 * z[:, :1, :5].sum()
            return out + noise

    noisy = Noisy(net)
    for hires_flag in (False, True):
        a = SegCAM(net, net[1], hires=hires_flag)(x, point)
        b = SegCAM(noisy, net[1], hires=hires_flag)(x, point)
        torch.testing.assert_close(a, b)


def test_empty_pixel_set_gives_an_empty_map():
    net = _RegionNet()
    maps = SegCAM(net, net.act)(_image([(6, 12, 6, 12)]), torch.zeros(1, SIZE, SIZE, dtype=torch.bool))
    assert maps.abs().max() == 0


def test_layers_of_a_plain_monai_unet_and_the_default():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    shapes = candidate_layers(net, torch.zeros(1, 1, 32, 32))
    layer = default_layer(shapes)
    assert shapes[layer][1:] == (8, 8)  # the bottleneck
    maps = SegCAM(net, dict(net.named_modules())[layer], class_index=1)(torch.rand(2, 1, 32, 32), torch.ones(2, 32, 32, dtype=torch.bool))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize(("value", "expected"), [("predicted", ("predicted", None)), ("IMAGE", ("image", None)),
                                                 ("point:1, 2,3", ("point", (1, 2, 3)))])
def test_parse_pixels(value, expected):
    assert parse_pixels(value) == expected


def test_parse_pixels_rejects():
    with pytest.raises(AmecamError, match="--pixels must be predicted, image or point:X,Y,Z"):
        parse_pixels("point:1,2")


def _white_inside_the_panel(path):
    """Near-white pixels in the middle 80% of the one black image panel of a montage (the page around it is white)."""
    from matplotlib.image import imread

    rgb = imread(str(path))[..., :3]
    black = rgb.max(axis=-1) < 0.05
    rows, cols = np.flatnonzero(black.sum(axis=1) > 50), np.flatnonzero(black.sum(axis=0) > 50)  # not the title's letters
    (r0, r1), (c0, c1) = (rows[0], rows[-1]), (cols[0], cols[-1])
    dr, dc = (r1 - r0) // 10, (c1 - c0) // 10
    inside = rgb[r0 + dr:r1 - dr, c0 + dc:c1 - dc]
    return int((inside.min(axis=-1) > 0.9).sum())


def test_montage_draws_the_mask_contour_and_the_point(tmp_path):
    """The predicted tumour's contour and the explained point are drawn on the panel (a test saw only that a file existed)."""
    from amecam_cli.maps import overlay_montage

    image, heat = np.zeros((40, 40, 6), np.float32), np.zeros((40, 40, 6), np.float32)
    image[39, 39] = 1  # a black panel with one white corner (a constant image is drawn in mid-grey)
    mask = np.zeros((40, 40, 6), bool)
    mask[10:30, 12:28, 3] = True
    plain = overlay_montage(image, heat, tmp_path / "plain.png", title="t", max_slices=1)
    contour = overlay_montage(image, heat, tmp_path / "contour.png", title="t", mask=mask)
    point = overlay_montage(image, heat, tmp_path / "point.png", title="t", point=(20, 20, 3))
    assert _white_inside_the_panel(plain) == 0
    assert _white_inside_the_panel(contour) > 50
    assert _white_inside_the_panel(point) > 5
