"""AME-CAM networks: the multi-exit classifier, the attention aggregator and the inference wrapper.

Chen et al., "AME-CAM: Attentive Multiple-Exit CAM for Weakly Supervised Segmentation on MRI Brain
Tumor", MICCAI 2023.

* :class:`MultiExitResNet` is a 2-D ResNet-18 built from MONAI's ``ResNetBlock`` with the chosen norm
  (InstanceNorm by default) in *every* block, the stem and the shortcuts; MONAI's own ``ResNet`` only
  applies ``norm`` to the stem. After each of the four stages an internal classifier (1x1 conv to one
  channel, then global average pooling) gives a tumour logit; the 1x1 conv output *is* that exit's
  class activation map M1..M4.
* :class:`AttentionAggregator` weights the four upsampled, per-image normalised maps pixel by pixel
  (softmax over the maps) into Mf.
* :class:`AMECAMNet` is what the bundle's ``network_def`` builds for inference: one tensor out,
  channel 0 the final map (1 = tumour; by default the paper's ``minmax(mean(M1..M4, Mf))``, or Mf
  alone with ``fusion="attention"``), channel 1 the classifier's tumour probability broadcast over the
  image, so ``verify_net_in_out`` and TorchScript tracing work.

Example:
    >>> net = AMECAMNet(in_channels=1)
    >>> net(torch.rand(2, 1, 128, 128)).shape
    torch.Size([2, 2, 128, 128])
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import UNet
from monai.networks.nets.resnet import ResNetBlock

__all__ = [
    "AMECAMNet",
    "AttentionAggregator",
    "EXIT_WEIGHTS",
    "FUSION_CHOICES",
    "FastInstanceNorm2d",
    "MultiExitResNet",
    "SegmentationNet",
    "TTA_CHOICES",
    "brain_region",
    "minmax_per_image",
    "use_fast_instance_norm",
]

#: BCE weights of the four exits in stage 1 (the paper's values)
EXIT_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_NORM = ("instance", {"affine": True})
#: how the final map is made: ``mean`` = ``minmax(mean(M1..M4, Mf))`` (the paper), ``attention`` = Mf alone
FUSION_CHOICES = ("mean", "attention")
#: test-time augmentation: ``none``, or ``flip`` = every map averaged over the slice and its three mirror images
#: (left-right, up-down, both: the flips training augments with), the exit logits too
TTA_CHOICES = ("none", "flip")
#: the flipped views of ``flip``: the dimensions each one mirrors
FLIP_VIEWS = ((), (-1,), (-2,), (-2, -1))


class FastInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (no running statistics) computed as a group norm with one group per channel.

    The two are the same function -- mean and variance over ``(H, W)`` of each channel of each image,
    then the per-channel affine -- but PyTorch's CPU group norm is faster, above all on channels-last
    tensors, where ``instance_norm`` first copies its input into a ``(1, B*C, H, W)`` batch norm
    (docs/benchmarks.md section 7: 20% off a stride-1 forward pass with channels-last weights, 23% off a
    training step). Parameter names are unchanged, so state dicts move freely between the two.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or self.track_running_stats:
            return super().forward(input)
        return F.group_norm(input, self.num_features, self.weight, self.bias, self.eps)


def use_fast_instance_norm(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.InstanceNorm2d`` without running statistics in ``module`` by
    :class:`FastInstanceNorm2d` with the same parameters (in place); returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.InstanceNorm2d and not child.track_running_stats:
            fast = FastInstanceNorm2d(child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                fast.weight, fast.bias = child.weight, child.bias
            setattr(module, name, fast)
        else:
            use_fast_instance_norm(child)
    return module


def minmax_per_image(maps: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Scale each ``(H, W)`` map of a ``(B, C, H, W)`` tensor to ``[0, 1]`` independently.

    With a ``(B, 1, H, W)`` boolean ``mask`` (the brain), minimum and maximum are taken inside it and
    the result is zero outside, so the empty background cannot set the scale.
    """
    if mask is None:
        flat = maps.flatten(2)
        low = flat.amin(dim=2, keepdim=True).unsqueeze(-1)
        high = flat.amax(dim=2, keepdim=True).unsqueeze(-1)
        return (maps - low) / (high - low + eps)
    inside = mask.expand_as(maps)
    big = torch.finfo(maps.dtype).max
    low = torch.where(inside, maps, torch.full_like(maps, big)).flatten(2).amin(dim=2).unsqueeze(-1).unsqueeze(-1)
    high = torch.where(inside, maps, torch.full_like(maps, -big)).flatten(2).amax(dim=2).unsqueeze(-1).unsqueeze(-1)
    empty = (inside.flatten(2).sum(dim=2) == 0).unsqueeze(-1).unsqueeze(-1)
    low = torch.where(empty, torch.zeros_like(low), low)
    high = torch.where(empty, torch.ones_like(high), high)
    return ((maps - low) / (high - low + eps)).clamp(0, 1) * inside.to(maps.dtype)


def brain_region(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` boolean: pixels where any modality is non-zero (preprocessing zeroes the rest)."""
    return x.abs().sum(dim=1, keepdim=True) > 0


class MultiExitResNet(nn.Module):
    """ResNet-18 classifier with an internal classifier after each residual stage.

    Args:
        in_channels: one per modality.
        layers: residual blocks per stage (ResNet-18: 2, 2, 2, 2).
        widths: channels per stage.
        norm: MONAI norm spec used in the stem, every block and every shortcut.
        stem_stride: stride of the 7x7 stem convolution. A bundle's configs pass ``network_args.stem_stride``
            from its metadata (``amecam train`` defaults to 1, full-resolution maps; 2 is the fast variant).
        stem_pool: whether the stem ends with a 3x3 stride-2 max pool.
        last_stride: stride of the last stage; 1 keeps M4 at twice the resolution (its 3x3 convolutions
            are then dilated by 2 to keep their receptive field), the usual choice in weakly supervised
            segmentation.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        norm: str | tuple = DEFAULT_NORM,
        stem_stride: int = 2,
        stem_pool: bool = True,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            msg = f"last_stride must be 1 or 2, got {last_stride}"
            raise ValueError(msg)
        if len(layers) != 4 or len(widths) != 4:
            msg = f"layers and widths must have 4 entries (one per stage), got {list(layers)} and {list(widths)}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=stem_stride, padding=3, bias=False),
            get_norm_layer(name=norm, spatial_dims=2, channels=widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity(),
        )
        stages = []
        in_planes = widths[0]
        for index, (blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else (last_stride if index == 3 else 2)
            stages.append(self._stage(in_planes, planes, blocks, stride, norm))
            in_planes = planes
        if last_stride == 1:
            for module in stages[3].modules():
                if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                    module.dilation, module.padding = (2, 2), (2, 2)
        self.stages = nn.ModuleList(stages)
        use_fast_instance_norm(self)  # MONAI's blocks build nn.InstanceNorm2d
        self.exits = nn.ModuleList(nn.Conv2d(w, 1, kernel_size=1) for w in widths)
        # +1 or -1 per exit, set after training (scripts.train.resolve_exit_polarity): with InstanceNorm
        # an exit can raise its pooled logit by lowering the map on the tumour and raising it elsewhere
        self.register_buffer("exit_polarity", torch.ones(len(widths)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int, norm: str | tuple) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                get_norm_layer(name=norm, spatial_dims=2, channels=planes),
            )
        modules = [ResNetBlock(in_planes, planes, spatial_dims=2, stride=stride, downsample=downsample, norm=norm)]
        modules += [ResNetBlock(planes, planes, spatial_dims=2, norm=norm) for _ in range(blocks - 1)]
        return nn.Sequential(*modules)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of the four stages."""
        out, feats = self.stem(x), []
        for stage in self.stages:
            out = stage(out)
            feats.append(out)
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(logits, maps)``: ``(B, 4)`` exit logits and the four raw ``(B, 1, h_i, w_i)`` maps."""
        maps = [head(f) for head, f in zip(self.exits, self.features(x))]
        logits = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        return logits, maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last-stage features, the embedding of the contrastive losses."""
        return self.features(x)[-1].mean(dim=(2, 3))

    def exit_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exit logits and the four maps: upsampled to the input, oriented by ``exit_polarity`` so that
        1 = tumour, and normalised per image to ``[0, 1]`` inside the brain (0 outside).

        Returns:
            ``(logits (B, 4), maps (B, 4, H, W))``.
        """
        logits, maps = self(x)
        return logits, self.orient_maps(x, maps)

    def orient_maps(self, x: torch.Tensor, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The raw maps of :meth:`forward` upsampled to ``x``, oriented and normalised: ``(B, 4, H, W)``."""
        size = x.shape[-2:]
        # float32 from here on: under bfloat16 autocast (GPU) the maps would otherwise be upsampled and
        # normalised with 8 bits of mantissa, and the 0.5 threshold would cut a coarsely quantised map
        upsampled = torch.cat([F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
        oriented = upsampled * self.exit_polarity.to(upsampled.dtype).view(1, -1, 1, 1)
        return minmax_per_image(oriented, brain_region(x))


class AttentionAggregator(nn.Module):
    """Pixel-wise attention over the four exit maps.

    Input: the grey image multiplied by each normalised exit map (4 channels). Output: softmax weights
    over the maps at every pixel; ``Mf = sum_i w_i * M_i``. ``polarity`` (+1 or -1) is set after
    training (see ``scripts.train.resolve_attention_polarity``): the contrastive losses are symmetric
    in foreground and background, so the learnt Mf may mark the background; -1 means ``Mf := 1 - Mf``.

    Args:
        n_maps: number of exit maps.
        hidden: channels of the hidden convolutions.
    """

    def __init__(self, n_maps: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(n_maps, hidden, kernel_size=3, padding=1),
            FastInstanceNorm2d(hidden, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=2, dilation=2),
            FastInstanceNorm2d(hidden, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, n_maps, kernel_size=1),
        )
        self.register_buffer("polarity", torch.ones(()))

    def weights(self, grey: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``(B, 4, H, W)`` for a ``(B, 1, H, W)`` grey image and ``(B, 4, H, W)`` maps."""
        return torch.softmax(self.net(grey * maps), dim=1)

    def forward(self, grey: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Mf ``(B, 1, H, W)`` with the learnt polarity *not* applied (training sees the raw map)."""
        return (self.weights(grey, maps) * maps).sum(dim=1, keepdim=True)

    def oriented(self, grey: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Mf with the resolved polarity applied (1 = tumour), zero outside the brain."""
        mf = self(grey, maps)
        flip = (self.polarity < 0).to(mf.dtype)
        return (mf * (1 - flip) + (1 - mf) * flip) * (grey > 0).to(mf.dtype)


class AMECAMNet(nn.Module):
    """Classifier + aggregator, one ``(B, 2, H, W)`` tensor out (the bundle's inference ``network_def``).

    Channel 0: the final AME-CAM map in ``[0, 1]``, 1 = tumour, zero outside the brain.
    Channel 1: the deepest exit's tumour probability, the same value at every pixel.

    Args:
        in_channels: one per modality.
        hidden: hidden channels of the aggregator.
        fusion: ``mean``, the paper's final map ``minmax(mean(M1, M2, M3, M4, Mf))``; or ``attention``,
            the attention map Mf alone (as the ``attention`` row of ``amecam evaluate`` scores it).
            Only inference depends on it: both share the same weights (a bundle records it as
            ``network_args.fusion``). docs/benchmarks.md section 8 compares the two.
        tta: ``none``, or ``flip``: test-time augmentation. The whole network runs on the slice and its three
            mirror images (left-right, up-down, both: the flips training augments with); every map is flipped
            back and averaged over the four, the exit logits are averaged (4x the work; same weights). A bundle
            records it as ``network_args.tta``; ``--augment`` of ``amecam infer``, ``amecam evaluate`` and the
            inference config overrides it (:meth:`set_tta`). docs/benchmarks.md section 2m.
        classifier_kwargs: passed to :class:`MultiExitResNet`.
    """

    def __init__(self, in_channels: int = 1, *, hidden: int = 32, fusion: str = "mean", tta: str = "none",
                 **classifier_kwargs) -> None:
        super().__init__()
        if fusion not in FUSION_CHOICES:
            msg = f"fusion must be one of {', '.join(FUSION_CHOICES)}, got {fusion!r}"
            raise ValueError(msg)
        self.fusion = fusion
        self.set_tta(tta)
        self.classifier = MultiExitResNet(in_channels, **classifier_kwargs)
        self.aggregator = AttentionAggregator(n_maps=4, hidden=hidden)

    def set_tta(self, tta: str) -> "AMECAMNet":
        """Choose the test-time augmentation (one of :data:`TTA_CHOICES`); returns the network."""
        if tta not in TTA_CHOICES:
            msg = f"tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}"
            raise ValueError(msg)
        self.tta = tta
        return self

    @staticmethod
    def grey(x: torch.Tensor) -> torch.Tensor:
        """The grey image the aggregator sees: the mean over modalities."""
        return x.mean(dim=1, keepdim=True)

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself, or with ``tta="flip"`` its four mirror images in one batch of ``4 B`` (see :data:`FLIP_VIEWS`)."""
        if self.tta == "none":
            return x
        return torch.cat([x.flip(dims) if dims else x for dims in FLIP_VIEWS])

    def _average_views(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With ``tta="flip"``: each ``(4 B, ...)`` map of :meth:`_combine` on :meth:`_views` flipped back and
        averaged over the views; the paper's final map is min-max normalised again, as it is per slice."""
        if self.tta == "none":
            return out
        batch, averaged = x.shape[0], {}
        for key, value in out.items():
            parts = value.view(len(FLIP_VIEWS), batch, *value.shape[1:])
            averaged[key] = torch.stack([part.flip(dims) if dims else part for part, dims in zip(parts, FLIP_VIEWS)]).mean(dim=0)
        if self.fusion == "mean":
            averaged["final"] = minmax_per_image(averaged["final"], brain_region(x))
        return averaged

    def all_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate: exit ``logits`` (B, 4), ``exits`` (B, 4, H, W), ``attention`` Mf and ``final``.

        With ``tta="flip"`` every map is made on each of the four mirror images, flipped back and averaged
        (the final map re-normalised), and the logits are averaged.
        """
        views = self._views(x)
        logits, exits = self.classifier.exit_maps(views)
        return {"logits": logits.view(-1, x.shape[0], logits.shape[1]).mean(dim=0),
                **self._average_views(x, self._combine(views, exits))}

    def _combine(self, x: torch.Tensor, exits: torch.Tensor) -> dict[str, torch.Tensor]:
        mf = self.aggregator.oriented(self.grey(x), exits)
        if self.fusion == "attention":
            final = mf
        else:
            final = minmax_per_image(torch.cat([exits, mf], dim=1).mean(dim=1, keepdim=True), brain_region(x))
        return {"exits": exits, "attention": mf, "final": final}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.all_maps(x)
        prob = torch.sigmoid(out["logits"][:, -1]).view(-1, 1, 1, 1).expand_as(out["final"])
        return torch.cat([out["final"], prob], dim=1)

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One pass of the classifier: the slices' tumour probability ``(B,)`` and the four raw exit maps.

        With :meth:`maps_from_raw` this splits :meth:`forward` in two, so that inference can compute the
        maps only for the slices the classifier calls tumour (``scripts.inference.gated_output``). Both
        methods are traced into ``models/model.ts`` beside ``forward``.
        """
        logits, raw = self.classifier(self._views(x))
        if self.tta == "none":
            return (torch.sigmoid(logits[:, -1]), *raw)
        batch, n = x.shape[0], len(FLIP_VIEWS)
        # each exit's raw maps of the four views as the channels of one (B, 4, h, w) map, so that gating
        # can pick slices by the first dimension
        raw = [m.view(n, batch, *m.shape[2:]).transpose(0, 1) for m in raw]
        return (torch.sigmoid(logits.view(n, batch, -1).mean(dim=0)[:, -1]), *raw)

    def maps_from_raw(self, x: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, m3: torch.Tensor, m4: torch.Tensor) -> torch.Tensor:
        """The final map ``(B, 1, H, W)`` of ``x`` from its raw exit maps (as :meth:`score` returns them);
        equal to channel 0 of :meth:`forward`, as every normalisation is per image."""
        views = self._views(x)
        if self.tta != "none":  # back from (B, 4 views, h, w) to the views' (4 B, 1, h, w)
            m1, m2, m3, m4 = (m.transpose(0, 1).reshape(-1, 1, *m.shape[2:]) for m in (m1, m2, m3, m4))
        exits = self.classifier.orient_maps(views, [m1, m2, m3, m4])
        return self._average_views(x, self._combine(views, exits))["final"]


class SegmentationNet(nn.Module):
    """MONAI 2-D U-Net behind the same one-tensor inference contract as :class:`AMECAMNet`.

    Used for the pseudo-label refinement (trained on AME-CAM masks) and the fully supervised upper
    bound (trained on expert masks). Output ``(B, 2, H, W)``: channel 0 the tumour probability (softmax
    of the U-Net's two classes, zero outside the brain), channel 1 the slice's tumour probability (the
    maximum of channel 0) broadcast, so slice gating means the same thing for both kinds of bundle.

    Args:
        in_channels: one per modality.
        channels: U-Net channels per level.
        strides: U-Net down-sampling strides.
        num_res_units: residual units per level.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
    ) -> None:
        super().__init__()
        self.unet = UNet(spatial_dims=2, in_channels=in_channels, out_channels=2, channels=tuple(channels),
                         strides=tuple(strides), num_res_units=num_res_units, norm="instance")
        use_fast_instance_norm(self.unet)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's two-class logits ``(B, 2, H, W)`` (background, tumour)."""
        return self.unet(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probability = torch.softmax(self.unet(x), dim=1)[:, 1:2] * brain_region(x).to(x.dtype)
        slice_probability = probability.flatten(1).amax(dim=1).view(-1, 1, 1, 1).expand_as(probability)
        return torch.cat([probability, slice_probability], dim=1)
