"""Training of the three AME-CAM stages; the bundle's ``train_*.yaml`` configs build these trainers.

* stage 0 (optional) :class:`SimCLRTrainer`: self-supervised pretraining of the encoder;
* stage 1 :class:`ClassifierTrainer`: the multi-exit classifier, BCE at every exit, Adam with a cosine
  schedule, the best epoch chosen by validation AUC of the deepest exit on the case-level split;
  then each exit map is oriented so that 1 = tumour (:func:`resolve_exit_polarity`);
* stage 2 :class:`AttentionTrainer`: the classifier frozen, the attention aggregator trained on tumour
  slices with the contrastive losses; then the polarity of Mf is resolved
  (:func:`resolve_attention_polarity`) and the whole inference network is saved as ``models/model.pt``.

Every trainer writes a checkpoint after each epoch (``models/checkpoints/``) and, with
``resume=True``, continues from it after an interruption. Under ``torchrun`` every trainer runs one
process per GPU with DistributedDataParallel (:mod:`.distributed`, ``configs/multi_gpu_train.yaml``). CPU speed-ups: slices cropped to the brain
(done by the slicer), normal slices sampled in balance with tumour slices, channels-last memory
format, no gradient or map upsampling where the result cannot change. On CUDA: bfloat16 autocast and
batches moved with non-blocking copies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .data import SliceSet, augment, balanced_epoch, simclr_views
from .device import DEVICE_CHOICES, resolve_device  # re-exported: configs and callers name scripts.train.resolve_device
from .distributed import Processes
from .files import written_whole
from .losses import AttentionContrastiveLoss, MultiExitBCELoss, NTXentLoss
from .networks import EXIT_WEIGHTS, AMECAMNet, MultiExitResNet, brain_region
from .options import number, switch, whole

__all__ = [
    "DEVICE_CHOICES",
    "AttentionTrainer",
    "ClassifierTrainer",
    "SimCLRTrainer",
    "deletion_scores",
    "resolve_attention_polarity",
    "resolve_device",
    "resolve_exit_polarity",
    "roc_auc",
    "set_determinism",
]

logger = logging.getLogger("amecam.train")


def epochs_text(count: int) -> str:
    """``"1 epoch"``, ``"20 epochs"``: the stage logs read as sentences."""
    return f"{count} epoch{'' if count == 1 else 's'}"


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan when one class is missing."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: share of the brain erased by the deletion test
DELETION_FRACTION = 0.15
#: at most this many tumour slices decide a polarity
POLARITY_SLICES = 96


@torch.no_grad()
def deletion_scores(classifier: MultiExitResNet, x: torch.Tensor, maps: torch.Tensor, *, fraction: float = DELETION_FRACTION) -> dict[str, torch.Tensor]:
    """Faithfulness of a map: the classifier's tumour logit with parts of the brain replaced.

    The highest and the lowest ``fraction`` of brain pixels of each map are replaced by the slice's
    median brain intensity (deletion), and, separately, everything *but* each of those regions is
    (insertion). Logits, not probabilities, so a confident classifier's scores do not saturate.

    Args:
        classifier: judges the edited images with its deepest exit.
        x: ``(B, C, H, W)`` images.
        maps: ``(B, H, W)`` maps to test.

    Returns:
        ``(B,)`` logits keyed ``erase_high``, ``erase_low``, ``keep_high``, ``keep_low``.
    """
    brain = brain_region(x)[:, 0]
    edited = {key: x.clone() for key in ("erase_high", "erase_low", "keep_high", "keep_low")}
    for b in range(x.shape[0]):
        inside = brain[b]
        values = maps[b][inside]
        if values.numel() < 2:
            continue
        k = max(1, int(fraction * values.numel()))
        high = inside & (maps[b] >= values.topk(k).values[-1])
        low = inside & (maps[b] <= (-values).topk(k).values[-1].neg())
        fill = x[b][:, inside].median(dim=1).values.view(-1, 1)
        for key, region in (("erase_high", high), ("erase_low", low), ("keep_high", inside & ~high), ("keep_low", inside & ~low)):
            edited[key][b][:, region] = fill.expand(-1, int(region.sum()))
    return {key: classifier(image)[0][:, -1] for key, image in edited.items()}


def _orientation(scores: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Evidence that a map's high region is the tumour, and the polarity it implies."""
    evidence = float((scores["erase_low"] - scores["erase_high"]).mean() + (scores["keep_high"] - scores["keep_low"]).mean())
    return evidence, 1.0 if evidence >= 0 else -1.0


def _polarity_batches(data: SliceSet, batch_size: int):
    n = min(len(data), POLARITY_SLICES)
    return data.batches(range(n), batch_size)


@torch.no_grad()
def resolve_exit_polarity(classifier: MultiExitResNet, batches, device: torch.device) -> list[float]:
    """Orient each exit map so that 1 = tumour, by a deletion test on tumour slices.

    With InstanceNorm every pixel's normalised activation depends on the whole image, so an exit can
    raise its pooled tumour logit by *lowering* its map on the tumour and raising it everywhere else
    (the official AME-CAM code flips all maps by hand for this reason). Without masks, the faithful
    orientation is the one whose tumour region matters to the classifier: erasing the pixels a
    correctly oriented map ranks highest lowers the tumour logit more than erasing those it ranks
    lowest, and keeping only them keeps more of it (see :func:`deletion_scores`). Sets
    ``classifier.exit_polarity`` and returns it.
    """
    classifier.eval()
    classifier.exit_polarity.fill_(1.0)
    collected: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(4)]
    for x, _ in batches:
        x = x.to(device)
        _, maps = classifier.exit_maps(x)
        for k in range(maps.shape[1]):
            for key, value in deletion_scores(classifier, x, maps[:, k]).items():
                collected[k].setdefault(key, []).append(value.cpu())
    polarity = []
    for k in range(4):
        if not collected[k]:
            polarity.append(1.0)
            continue
        scores = {key: torch.cat(values) for key, values in collected[k].items()}
        evidence, sign = _orientation(scores)
        polarity.append(sign)
        logger.info("exit %d: tumour logit erasing its high/low region %.2f/%.2f, keeping only it %.2f/%.2f -> polarity %+d",
                    k + 1, float(scores["erase_high"].mean()), float(scores["erase_low"].mean()),
                    float(scores["keep_high"].mean()), float(scores["keep_low"].mean()), int(sign))
    classifier.exit_polarity.copy_(torch.tensor(polarity))
    return polarity


@torch.no_grad()
def resolve_attention_polarity(network: AMECAMNet, batches, device: torch.device) -> float:
    """Orient Mf so that 1 = tumour with the same deletion test as the exits.

    The contrastive losses are symmetric in foreground and background, so training alone cannot
    tell which side Mf marks. Sets ``network.aggregator.polarity`` and returns it.
    """
    network.eval()
    network.aggregator.polarity.fill_(1.0)
    collected: dict[str, list[torch.Tensor]] = {}
    for x, _ in batches:
        x = x.to(device)
        _, exits = network.classifier.exit_maps(x)
        mf = network.aggregator.oriented(network.grey(x), exits)[:, 0]
        for key, value in deletion_scores(network.classifier, x, mf).items():
            collected.setdefault(key, []).append(value.cpu())
    polarity = 1.0
    if collected:
        scores = {key: torch.cat(values) for key, values in collected.items()}
        _, polarity = _orientation(scores)
        logger.info("Mf: tumour logit erasing its high/low region %.2f/%.2f, keeping only it %.2f/%.2f -> polarity %+d",
                    float(scores["erase_high"].mean()), float(scores["erase_low"].mean()),
                    float(scores["keep_high"].mean()), float(scores["keep_low"].mean()), int(polarity))
    network.aggregator.polarity.fill_(polarity)
    return polarity


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested in dicts, lists, tuples) on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((key, _on_cpu(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(value) for value in obj)
    return obj


def _save(obj: Any, path: Path) -> None:
    """Save ``obj`` atomically, its tensors on the CPU: weights trained on a GPU load anywhere, even
    with a bare ``torch.load`` on a machine without one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as tmp:  # Ctrl-C while writing: the last whole file stays
        torch.save(_on_cpu(obj), tmp)


class _Stage:
    """What the three stages share: device, epochs, checkpoints, resume, progress, summaries."""

    name = "stage"

    def __init__(
        self,
        *,
        dataset_dir: str,
        output_dir: str,
        epochs: int,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        device: str | torch.device = "auto",
        resume: bool = False,
        progress: bool = True,
        channels_last: bool = True,
        amp: bool = True,
        affine_augmentation: bool = False,
        augmentation: bool = True,
        num_threads: int | None = None,
        distributed: bool | str = "auto",
    ) -> None:
        self.epochs = whole(epochs, "epochs", 0)
        self.batch_size = whole(batch_size, "batch_size", 2)
        self.learning_rate = number(learning_rate, "learning_rate", 0.0)
        self.weight_decay = number(weight_decay, "weight_decay", 0.0)
        self.seed = whole(seed, "seed", 0)
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.processes = Processes(distributed, device)  # one process, or one of torchrun's
        self.device = self.processes.device
        self.resume = switch(resume, "resume")
        self.progress = switch(progress, "progress")
        self.channels_last = switch(channels_last, "channels_last")
        self.amp = switch(amp, "amp") and self.device.type == "cuda"
        self.affine = switch(affine_augmentation, "affine_augmentation")
        self.augmentation = switch(augmentation, "augmentation")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.checkpoint_path = self.output_dir / "checkpoints" / f"{self.name}.pt"
        self.summary_path = self.output_dir / f"{self.name}.json"

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="slice", leave=False,
                    disable=None if self.progress and self.processes.main else True)

    def _keep(self, obj: Any, path: Path) -> None:
        """Save ``obj`` (see ``_save``) from one process only: the only one, or torchrun's process 0."""
        if self.processes.main:
            _save(obj, path)

    def _generator(self, offset: int) -> torch.Generator:
        """The augmentation generator of an epoch; each torchrun process draws its own (process 0's is
        the single-process one)."""
        return torch.Generator().manual_seed((self.seed * 1000 + offset) * self.processes.world_size + self.processes.rank)

    def _augment(self, x: torch.Tensor, generator: torch.Generator, **kwargs):
        """``augment`` (flips, intensity, optionally affine), or ``x`` untouched with ``augmentation=False``."""
        if not self.augmentation:
            return x if kwargs.get("target") is None else (x, kwargs["target"])
        return augment(x, generator, affine=self.affine and kwargs.get("target") is None, **kwargs)

    def _load_checkpoint(self) -> dict | None:
        if not (self.resume and self.checkpoint_path.exists()):
            return None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        logger.info("%s: resuming after epoch %d from %s", self.name, state["epoch"] + 1, self.checkpoint_path)
        return state

    def _optimiser(self, parameters, modules: dict, best: dict | None = None):
        """Adam with a cosine schedule; when resuming, restore them and ``modules`` from the checkpoint.

        Returns:
            ``(optimizer, scheduler, history, best, first_epoch, resumed)``.
        """
        optimizer = torch.optim.Adam(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        state = self._load_checkpoint()
        if state is None:
            return optimizer, scheduler, [], best, 0, False
        for key, module in modules.items():
            module.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return optimizer, scheduler, state["history"], state.get("best", best), state["epoch"] + 1, True

    def _processes_text(self) -> str:
        return f", {self.processes.world_size} processes (batch {self.batch_size} each)" if self.processes.enabled else ""

    def _write_summary(self, summary: dict) -> dict:
        summary = {"stage": self.name, **summary}
        if self.processes.enabled:
            summary["processes"] = self.processes.world_size
        if not self.processes.main:
            return summary
        with written_whole(self.summary_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary


class ClassifierTrainer(_Stage):
    """Stage 1: train the multi-exit classifier.

    Args:
        network: a :class:`MultiExitResNet`.
        exit_weights: BCE weight of each exit.
        balance: sample as many normal as tumour slices each epoch (a fresh draw every epoch).
        pretrained: optional encoder weights from stage 0 (loaded non-strictly).
        other arguments: see ``_Stage``.
    """

    name = "stage1"

    def __init__(self, network: MultiExitResNet, *, exit_weights=EXIT_WEIGHTS, balance: bool = True, pretrained: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.network = network.to(self.device)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.loss = MultiExitBCELoss(exit_weights).to(self.device)
        self.balance = switch(balance, "balance")
        self.pretrained = pretrained
        self.best_path = self.output_dir / "classifier.pt"

    @torch.no_grad()
    def validate(self, data: SliceSet) -> dict:
        """Exit probabilities on ``data``: AUC per exit and the loss."""
        self.network.eval()
        logits = []
        for x, _ in data.batches(range(len(data)), self.batch_size * 2):
            with self._autocast():
                logits.append(self.network(self._to_device(x))[0].float().cpu())
        logits = torch.cat(logits) if logits else torch.zeros(0, 4)
        labels = torch.from_numpy(data.labels)
        aucs = [roc_auc(torch.sigmoid(logits[:, k]).numpy(), data.labels) for k in range(logits.shape[1])]
        loss = float(self.loss(logits, labels)) if len(labels) else math.nan
        return {"auc": aucs, "loss": loss}

    def run(self) -> dict:
        set_determinism(self.seed)
        train, val = SliceSet(self.dataset_dir, "train"), SliceSet(self.dataset_dir, "val")
        if not (train.labels == 1).any() or not (train.labels == 0).any():
            msg = f"{self.dataset_dir}: the training split needs both tumour and normal slices, got {int((train.labels == 1).sum())} tumour and {int((train.labels == 0).sum())} normal"
            raise ValueError(msg)
        optimizer, scheduler, history, best, start, resumed = self._optimiser(
            self.network.parameters(), {"network": self.network}, {"auc": -1.0, "epoch": -1})
        if not resumed and self.pretrained and Path(self.pretrained).exists():
            missing, _ = self.network.load_state_dict(torch.load(self.pretrained, map_location=self.device), strict=False)
            logger.info("stage 1: encoder initialised from %s (%d exit tensors trained from scratch)", self.pretrained, len(missing))
        logger.info(
            "stage 1: %d train slices (%d tumour), %d val slices, %s, batch %d, device %s%s",
            len(train), int((train.labels == 1).sum()), len(val), epochs_text(self.epochs), self.batch_size, self.device, self._processes_text(),
        )
        model = self.processes.wrap(self.network)
        for epoch in range(start, self.epochs):
            rng = np.random.default_rng([self.seed, epoch])
            generator = self._generator(epoch)
            order = self.processes.shard(balanced_epoch(train.labels, rng, balance=self.balance))
            model.train()
            total, seen, started = torch.zeros((), device=self.device), 0, time.perf_counter()
            with self._bar(len(order), f"stage 1 epoch {epoch + 1}/{self.epochs}") as bar:
                for x, y in train.batches(order, self.batch_size):
                    x = self._to_device(self._augment(x, generator))
                    with self._autocast():
                        logits, _ = model(x)
                        loss = self.loss(logits.float(), y.to(self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(y)  # summed on the device: no host round-trip per batch
                    seen += len(y)
                    bar.update(len(y))
            total = float(self.processes.sum(total))  # waits for the device, so the time below is the epoch's
            seen *= self.processes.world_size  # every process trained on as many slices
            elapsed = time.perf_counter() - started
            scheduler.step()
            metrics = self.validate(val) if len(val) else {"auc": [math.nan] * 4, "loss": math.nan}
            score = metrics["auc"][-1]
            record = {
                "epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": metrics["loss"],
                "val_auc": metrics["auc"], "train_slices_per_s": seen / elapsed, "seconds": elapsed,
            }
            history.append(record)
            if math.isnan(score):  # no usable validation: keep the last epoch
                improved = epoch == self.epochs - 1
            else:  # higher AUC wins; an AUC tie (it saturates on easy data) goes to the lower validation loss
                tie = abs(score - best["auc"]) <= 1e-4 and metrics["loss"] < best.get("loss", math.inf)
                improved = score > best["auc"] + 1e-4 or tie
            if improved or best["epoch"] < 0:
                best = {"auc": score if not math.isnan(score) else -1.0, "loss": metrics["loss"], "epoch": epoch + 1}
                self._keep(self.network.state_dict(), self.best_path)
            logger.info(
                "stage 1 epoch %d/%d: loss %.4f, val AUC per exit %s, %.1f slices/s%s",
                epoch + 1, self.epochs, record["train_loss"], ", ".join(f"{a:.3f}" for a in metrics["auc"]),
                record["train_slices_per_s"], " (best)" if best["epoch"] == epoch + 1 else "",
            )
            self._keep({"epoch": epoch, "network": self.network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history, "best": best}, self.checkpoint_path)
        self.processes.check_in_step(self.network)
        self.processes.barrier()  # process 0 has written the best epoch's weights
        if self.best_path.exists():
            self.network.load_state_dict(torch.load(self.best_path, map_location=self.device))
        measured = best["auc"] >= 0  # AUC is in [0, 1]; -1 marks "never measured"
        if not measured and history:
            logger.warning(
                "stage 1: no validation AUC (the validation split has %d tumour and %d normal slices; it needs both): "
                "kept the last epoch. Train on more cases to have a held-out check",
                int((val.labels == 1).sum()), int((val.labels == 0).sum()))
        tumour = SliceSet(self.dataset_dir, "val" if (val.labels == 1).any() else "train", labels=("tumor",))
        polarity = resolve_exit_polarity(self.network, _polarity_batches(tumour, self.batch_size), self.device)
        self._keep(self.network.state_dict(), self.best_path)
        self.processes.barrier()
        return self._write_summary({"best_epoch": best["epoch"], "best_val_auc": best["auc"] if measured else None, "exit_polarity": polarity,
                                    "history": history, "n_train": len(train), "n_val": len(val)})


class AttentionTrainer(_Stage):
    """Stage 2: freeze the classifier and train the attention aggregator with the contrastive losses.

    Args:
        network: an :class:`AMECAMNet`; its classifier is loaded from ``classifier_weights``.
        classifier_weights: stage 1's best classifier (``models/classifier.pt``).
        other arguments: see ``_Stage``.
    """

    name = "stage2"

    def __init__(self, network: AMECAMNet, *, classifier_weights: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.network = network.to(self.device)
        self.classifier_weights = Path(classifier_weights)
        self.loss = AttentionContrastiveLoss()
        self.model_path = self.output_dir / "model.pt"

    def _contrastive(self, x: torch.Tensor, aggregator: nn.Module | None = None) -> dict[str, torch.Tensor]:
        net = self.network
        with torch.no_grad():
            _, exits = net.classifier.exit_maps(x)
        mf = (aggregator or net.aggregator)(net.grey(x), exits)
        foreground = net.classifier.embed(x * mf)
        background = net.classifier.embed(x * (1 - mf))
        return self.loss(foreground.float(), background.float())

    @torch.no_grad()
    def validate(self, data: SliceSet) -> float:
        self.network.eval()
        losses, weights = [], []
        for x, _ in data.batches(range(len(data)), self.batch_size):
            if len(x) < 2:
                continue
            with self._autocast():
                losses.append(float(self._contrastive(self._to_device(x))["loss"]))
            weights.append(len(x))
        return float(np.average(losses, weights=weights)) if losses else math.nan

    def run(self) -> dict:
        set_determinism(self.seed)
        if not self.classifier_weights.exists():
            msg = f"{self.classifier_weights}: stage 1 weights not found; run stage 1 first"
            raise FileNotFoundError(msg)
        self.network.classifier.load_state_dict(torch.load(self.classifier_weights, map_location=self.device))
        self.network.classifier.requires_grad_(False)
        self.network.classifier.eval()
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        train = SliceSet(self.dataset_dir, "train", labels=("tumor",))
        val = SliceSet(self.dataset_dir, "val", labels=("tumor",))
        if len(train) < 2:
            msg = f"{self.dataset_dir}: stage 2 needs at least 2 tumour slices in the training split, got {len(train)}"
            raise ValueError(msg)
        parameters = list(self.network.aggregator.parameters())
        optimizer, scheduler, history, best, start, _ = self._optimiser(
            parameters, {"aggregator": self.network.aggregator}, {"loss": math.inf, "epoch": -1, "state": None})
        logger.info("stage 2: %d train / %d val tumour slices, %s, device %s%s",
                    len(train), len(val), epochs_text(self.epochs), self.device, self._processes_text())
        aggregator = self.processes.wrap(self.network.aggregator)
        for epoch in range(start, self.epochs):
            rng = np.random.default_rng([self.seed, 100 + epoch])
            generator = self._generator(100 + epoch)
            order = self.processes.shard(rng.permutation(len(train)))
            if len(order) % self.batch_size == 1:
                order = order[:-1]  # the losses need pairs (the same in every process: their shares are as long)
            aggregator.train()
            totals, seen, started = {k: torch.zeros((), device=self.device) for k in ("ff", "fb", "bb", "loss")}, 0, time.perf_counter()
            with self._bar(len(order), f"stage 2 epoch {epoch + 1}/{self.epochs}") as bar:
                for x, _ in train.batches(order, self.batch_size):
                    x = self._to_device(self._augment(x, generator))
                    with self._autocast():
                        terms = self._contrastive(x, aggregator)
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    optimizer.step()
                    for key in totals:
                        totals[key] += terms[key].detach().float() * len(x)
                    seen += len(x)
                    bar.update(len(x))
            totals = {key: float(self.processes.sum(value)) for key, value in totals.items()}
            seen *= self.processes.world_size
            elapsed = time.perf_counter() - started
            scheduler.step()
            val_loss = self.validate(val) if len(val) >= 2 else math.nan
            record = {"epoch": epoch + 1, **{f"train_{k}": v / max(seen, 1) for k, v in totals.items()},
                      "val_loss": val_loss, "train_slices_per_s": seen / elapsed, "seconds": elapsed}
            history.append(record)
            score = val_loss if not math.isnan(val_loss) else record["train_loss"]
            if score < best["loss"]:
                best = {"loss": score, "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in self.network.aggregator.state_dict().items()}}
            logger.info(
                "stage 2 epoch %d/%d: loss %.4f (ff %.3f, fb %.3f, bb %.3f), val %.4f, %.1f slices/s",
                epoch + 1, self.epochs, record["train_loss"], record["train_ff"], record["train_fb"], record["train_bb"],
                val_loss, record["train_slices_per_s"],
            )
            self._keep({"epoch": epoch, "aggregator": self.network.aggregator.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history, "best": best}, self.checkpoint_path)
        self.processes.check_in_step(self.network.aggregator)
        if best["state"] is not None:
            self.network.aggregator.load_state_dict(best["state"])
        polarity_data = val if len(val) else train
        polarity = resolve_attention_polarity(self.network, _polarity_batches(polarity_data, self.batch_size), self.device)
        self.network = self.network.to(memory_format=torch.contiguous_format)
        self._keep(self.network.state_dict(), self.model_path)
        self.processes.barrier()
        return self._write_summary({"best_epoch": best["epoch"], "best_loss": best["loss"] if best["epoch"] > 0 else None,
                                    "polarity": polarity, "history": history, "n_train": len(train), "n_val": len(val)})


class _Projection(nn.Module):
    """SimCLR's projection of the encoder's embedding, as one module for DDP."""

    def __init__(self, network: MultiExitResNet, head: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.network.embed(x))


class SimCLRTrainer(_Stage):
    """Stage 0 (optional): SimCLR pretraining of the encoder on all training slices, labels unused.

    Args:
        network: a :class:`MultiExitResNet` whose encoder is trained (the exits are not used).
        temperature: NT-Xent temperature.
        projection_dim: output size of the projection head.
    """

    name = "stage0"

    def __init__(self, network: MultiExitResNet, *, temperature: float = 0.2, projection_dim: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        self.network = network.to(self.device)
        width = self.network.exits[-1].in_channels
        self.head = nn.Sequential(nn.Linear(width, 256), nn.ReLU(inplace=True), nn.Linear(256, projection_dim)).to(self.device)
        self.loss = NTXentLoss(temperature)
        self.encoder_path = self.output_dir / "simclr_encoder.pt"

    def run(self) -> dict:
        set_determinism(self.seed)
        data = SliceSet(self.dataset_dir, "train", labels=("tumor", "normal", "ambiguous", "unlabelled"))
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        parameters = list(self.network.parameters()) + list(self.head.parameters())
        optimizer, scheduler, history, _, start, _ = self._optimiser(parameters, {"network": self.network, "head": self.head})
        logger.info("stage 0 (SimCLR): %d slices, %d epochs, batch %d%s", len(data), self.epochs, self.batch_size, self._processes_text())
        # the exits take no part in SimCLR: DDP must not wait for their gradients
        projected = self.processes.wrap(_Projection(self.network, self.head), find_unused_parameters=True)
        for epoch in range(start, self.epochs):
            order = self.processes.shard(np.random.default_rng([self.seed, 200 + epoch]).permutation(len(data)))
            if len(order) % self.batch_size == 1:
                order = order[:-1]
            generator = self._generator(200 + epoch)
            projected.train()
            total, seen, started = torch.zeros((), device=self.device), 0, time.perf_counter()
            with self._bar(len(order), f"stage 0 epoch {epoch + 1}/{self.epochs}") as bar:
                for x, _ in data.batches(order, self.batch_size):
                    v1, v2 = simclr_views(x, generator)
                    with self._autocast():  # both views in one pass: DDP allows one forward per backward
                        z1, z2 = projected(self._to_device(torch.cat([v1, v2]))).chunk(2)
                        loss = self.loss(z1.float(), z2.float())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(x)
                    seen += len(x)
                    bar.update(len(x))
            total = float(self.processes.sum(total))
            seen *= self.processes.world_size
            elapsed = time.perf_counter() - started
            scheduler.step()
            history.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "slices_per_s": seen / elapsed, "seconds": elapsed})
            logger.info("stage 0 epoch %d/%d: NT-Xent %.4f", epoch + 1, self.epochs, history[-1]["loss"])
            self._keep({"epoch": epoch, "network": self.network.state_dict(), "head": self.head.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history},
                       self.checkpoint_path)
        self.processes.check_in_step(self.network)
        encoder = {k: v for k, v in self.network.state_dict().items() if not k.startswith("exits.")}
        self._keep(encoder, self.encoder_path)
        self.processes.barrier()
        return self._write_summary({"history": history, "n_slices": len(data)})
