"""bundle/scripts/losses.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from amecam_bundle.scripts.losses import AttentionContrastiveLoss, MultiExitBCELoss, NTXentLoss
from amecam_bundle.scripts.train import roc_auc


def test_multi_exit_bce_uses_the_paper_weights():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 3.0]])
    target = torch.tensor([1, 0])
    expected = sum(
        w * F.binary_cross_entropy_with_logits(logits[:, k], target.float())
        for k, w in enumerate((0.25, 0.5, 0.75, 1.0))
    )
    torch.testing.assert_close(MultiExitBCELoss()(logits, target), expected)
    with pytest.raises(ValueError, match="one column per exit"):
        MultiExitBCELoss()(logits[:, :3], target)


def test_contrastive_loss_is_symmetric_in_foreground_and_background():
    torch.manual_seed(0)
    f, b = torch.rand(5, 16), torch.rand(5, 16)
    forward, swapped = AttentionContrastiveLoss()(f, b), AttentionContrastiveLoss()(b, f)
    torch.testing.assert_close(forward["loss"], swapped["loss"])
    torch.testing.assert_close(forward["ff"], swapped["bb"])


def test_contrastive_terms_on_known_embeddings():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # foregrounds identical, backgrounds identical, foreground orthogonal to background: the optimum
    good = AttentionContrastiveLoss()(e1.repeat(3, 1), e2.repeat(3, 1))
    assert good["ff"] < 1e-3 and good["bb"] < 1e-3 and good["fb"] < 1e-3
    # foreground equal to background: the foreground-background term explodes
    bad = AttentionContrastiveLoss()(e1.repeat(3, 1), e1.repeat(3, 1))
    assert bad["fb"] == pytest.approx(-math.log(1e-4), rel=1e-3)
    with pytest.raises(ValueError, match="at least 2 images"):
        AttentionContrastiveLoss()(e1, e2)


def test_ntxent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 32)
    assert NTXentLoss()(z, z + 0.01 * torch.randn(8, 32)) < NTXentLoss()(z, torch.randn(8, 32))


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75), ([1, 2, 3], [0, 1, 1], 1.0), ([0.5, 0.5], [0, 1], 0.5)],
)
def test_roc_auc_exact(scores, labels, expected):
    assert roc_auc(scores, labels) == pytest.approx(expected)


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc([0.2, 0.3], [1, 1]))
