"""The CAM family on a trained multi-exit classifier, and the AME-CAM rows, behind one interface.

Baselines (computed on the same classifier as AME-CAM, for its deepest exit's tumour logit unless
another ``exit_index`` is given):

* ``cam``: Zhou et al., CVPR 2016. The exit's linear head applied to the target features. On the
  deepest stage this *is* the raw (un-oriented) M4 map.
* ``gradcam``: Selvaraju et al., ICCV 2017. Channel weights = spatial mean of the gradient.
* ``gradcampp``: Chattopadhay et al., WACV 2018. Weights from second/third-order gradient terms.
* ``layercam``: Jiang et al., TIP 2021. Element-wise ReLU(gradient) x activation.
* ``hirescam``: Draelos & Carin, 2020. Element-wise gradient x activation, summed over channels.
* ``scorecam``: Wang et al., CVPRW 2020. Channel weights = tumour score of the image masked by each
  upsampled channel; gradient-free, and costly, so only the ``budget`` most active channels are scored.

Note that for a head that is linear after global average pooling, the gradient at the last stage is
spatially constant, so Grad-CAM, HiResCAM and CAM coincide there (up to ReLU and bias); they differ
at earlier stages (``stage`` 1-3).

AME-CAM rows: ``exit1`` .. ``exit4`` (each oriented exit map), ``mean_exits`` (their plain mean, no
attention), ``attention`` (Mf alone) and ``amecam`` (the full final map). These need no backward pass.

Every map is upsampled to the input and normalised per slice inside the brain so that 1 = most
tumour-like and 0 = least (0 outside the brain too). Hooks are released after every call, so a second
call gives the same result.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AmecamError

__all__ = [
    "AMECAM_METHODS",
    "BASELINE_METHODS",
    "BaseCAM",
    "METHODS",
    "compute_maps",
    "make_cam",
    "validate_methods",
]

AMECAM_METHODS = ("amecam", "exit1", "exit2", "exit3", "exit4", "mean_exits", "attention")
BASELINE_METHODS = ("cam", "gradcam", "gradcampp", "layercam", "scorecam", "hirescam")
METHODS = AMECAM_METHODS + BASELINE_METHODS


def validate_methods(methods: str | list | tuple, option: str = "method") -> tuple[str, ...]:
    """``"all"``, one name or a comma-separated list -> validated names (the error names ``--option`` and lists the valid ones)."""
    if isinstance(methods, str):
        names = [m.strip().lower() for m in methods.split(",") if m.strip()]
    else:
        names = [str(m).strip().lower() for m in methods]
    if names == ["all"]:
        return METHODS
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise AmecamError(f"--{option} must be one of {', '.join(METHODS)} (or all), got {', '.join(unknown) or repr(methods)!r}")
    return tuple(dict.fromkeys(names))


def _normalise(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` raw maps -> ``(B, H, W)`` in [0, 1] inside the brain of ``x``, 1 = most salient."""
    from amecam_bundle.scripts.networks import brain_region, minmax_per_image

    up = F.interpolate(maps[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return minmax_per_image(up, brain_region(x))[:, 0]


class BaseCAM:
    """Hooks on a target layer, a score to explain, and the map formula left to subclasses.

    Args:
        model: returns ``(logits (B, K), ...)`` or logits ``(B, K)``.
        target_layer: module whose output activations are explained.
        exit_index: which logit column is the tumour score.
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, target_layer: nn.Module, *, exit_index: int = -1) -> None:
        self.model = model
        self.target_layer = target_layer
        self.exit_index = exit_index
        self._activations: torch.Tensor | None = None
        self._gradients: torch.Tensor | None = None
        self._handles: list = []

    # -- hooks ---------------------------------------------------------------------------------
    def _register(self) -> None:
        def forward_hook(_module, _inputs, output):
            self._activations = output
            if self.needs_gradients and output.requires_grad:
                output.register_hook(self._save_gradient)

        self._handles.append(self.target_layer.register_forward_hook(forward_hook))

    def _save_gradient(self, grad: torch.Tensor) -> None:
        self._gradients = grad

    def release(self) -> None:
        """Remove the hooks (called after every map, and by ``__exit__``)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._activations = self._gradients = None

    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the map -------------------------------------------------------------------------------
    def score(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        return logits[:, self.exit_index]

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` raw map from the target layer's ``(B, C, h, w)`` activations (and gradients)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, H, W)`` in [0, 1], 1 = most tumour-like."""
        self.model.eval()
        self._register()
        try:
            with torch.enable_grad() if self.needs_gradients else torch.no_grad():
                x = x.detach().clone().requires_grad_(self.needs_gradients)
                score = self.score(x)
                if self.needs_gradients:
                    self.model.zero_grad(set_to_none=True)
                    score.sum().backward()
                raw = self.compute(self._activations.detach(), None if self._gradients is None else self._gradients.detach(), x.detach())
        finally:
            self.release()
        return _normalise(raw.detach(), x.detach())


class CAM(BaseCAM):
    """Class activation mapping: the exit's 1x1 head applied to the target activations."""

    needs_gradients = False

    def __init__(self, model: nn.Module, target_layer: nn.Module, *, head: nn.Conv2d, exit_index: int = -1) -> None:
        super().__init__(model, target_layer, exit_index=exit_index)
        self.head = head

    def compute(self, activations, gradients, x):
        return self.head(activations)[:, 0]


class GradCAM(BaseCAM):
    """ReLU(sum_c mean(dS/dA_c) A_c)."""

    def compute(self, activations, gradients, x):
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * activations).sum(dim=1))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: pixel weights alpha = g^2 / (2 g^2 + sum(A) g^3), channel weight sum(alpha ReLU(g)).

    The closed form of the paper for an exponential score, computed with first-order gradients as
    common implementations do.
    """

    def compute(self, activations, gradients, x):
        g2, g3 = gradients.pow(2), gradients.pow(3)
        denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
        return F.relu((weights * activations).sum(dim=1))


class LayerCAM(BaseCAM):
    """ReLU(sum_c ReLU(dS/dA) * A), element-wise."""

    def compute(self, activations, gradients, x):
        return F.relu((F.relu(gradients) * activations).sum(dim=1))


class HiResCAM(BaseCAM):
    """ReLU(sum_c dS/dA * A), element-wise: faithful to what the score actually used."""

    def compute(self, activations, gradients, x):
        return F.relu((gradients * activations).sum(dim=1))


class ScoreCAM(BaseCAM):
    """Channel weights from the tumour score of the input masked by each upsampled channel.

    Args:
        budget: score only this many channels per image, the most active ones (cost bound).
        batch_size: masked images per forward pass.
    """

    needs_gradients = False

    def __init__(self, model: nn.Module, target_layer: nn.Module, *, exit_index: int = -1, budget: int = 64, batch_size: int = 64) -> None:
        super().__init__(model, target_layer, exit_index=exit_index)
        self.budget = int(budget)
        self.batch_size = int(batch_size)
        self.forward_passes = 0

    def compute(self, activations, gradients, x):
        b, c = activations.shape[:2]
        k = min(self.budget, c)
        top = activations.mean(dim=(2, 3)).topk(k, dim=1).indices  # (B, k)
        maps = []
        with torch.no_grad():
            for i in range(b):
                chosen = activations[i, top[i]]  # (k, h, w)
                up = F.interpolate(chosen[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                flat = up.flatten(1)
                low, high = flat.min(dim=1).values.view(-1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1)
                masks = (up - low) / (high - low + 1e-8)
                scores = []
                for start in range(0, k, self.batch_size):
                    masked = x[i : i + 1] * masks[start : start + self.batch_size, None]
                    scores.append(self.score(masked))
                    self.forward_passes += 1
                weights = torch.cat(scores)  # tumour logits of the masked images
                weights = torch.softmax(weights, dim=0)
                maps.append(F.relu((weights.view(-1, 1, 1) * chosen).sum(dim=0)))
        return torch.stack(maps)


def make_cam(method: str, classifier: nn.Module, *, stage: int = 4, budget: int = 64) -> BaseCAM:
    """A baseline CAM object for ``classifier`` (a ``MultiExitResNet``) at ``stage`` (1-4)."""
    if not 1 <= int(stage) <= 4:
        raise AmecamError(f"--stage must be 1, 2, 3 or 4, got {stage}")
    layer = classifier.stages[int(stage) - 1]
    exit_index = 3  # the deepest exit's tumour logit is the classifier's decision
    if method == "cam":
        return CAM(classifier, layer, head=classifier.exits[int(stage) - 1], exit_index=int(stage) - 1)
    classes: dict[str, Callable[..., BaseCAM]] = {
        "gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM, "hirescam": HiResCAM,
    }
    if method == "scorecam":
        return ScoreCAM(classifier, layer, exit_index=exit_index, budget=budget)
    if method not in classes:
        raise AmecamError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return classes[method](classifier, layer, exit_index=exit_index)


def compute_maps(
    network: nn.Module,
    x: torch.Tensor,
    methods: tuple[str, ...],
    *,
    batch_size: int = 32,
    stage: int = 4,
    budget: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Every requested map for ``(N, C, S, S)`` slices, batched; returns ``{method: (N, S, S)}`` on the CPU.

    ``network`` is an ``AMECAMNet``; the baselines run on its classifier. Also returns ``"probability"``
    (the deepest exit's tumour probability per slice).
    """
    from amecam_bundle.scripts.networks import brain_region, minmax_per_image

    device = torch.device(device)
    network = network.to(device).eval()
    out: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    out["probability"] = []
    baselines = {m: make_cam(m, network.classifier, stage=stage, budget=budget) for m in methods if m in BASELINE_METHODS}
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device)
        with torch.no_grad():
            maps = network.all_maps(batch)
        out["probability"].append(torch.sigmoid(maps["logits"][:, -1]).cpu())
        for method in methods:
            if method == "amecam":
                value = maps["final"][:, 0]
            elif method == "attention":
                value = maps["attention"][:, 0]
            elif method == "mean_exits":
                value = minmax_per_image(maps["exits"].mean(dim=1, keepdim=True), brain_region(batch))[:, 0]
            elif method.startswith("exit"):
                value = maps["exits"][:, int(method[4:]) - 1]
            else:
                value = baselines[method](batch)
            out[method].append(value.detach().cpu())
    result = {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}
    if isinstance(baselines.get("scorecam"), ScoreCAM):
        result["scorecam_forward_passes"] = torch.tensor(baselines["scorecam"].forward_passes)
    return result
