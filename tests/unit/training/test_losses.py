"""Losses against arithmetic written out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalserve_training.losses import (
    FocalLensLoss,
    FSCCLIPLoss,
    batch_contrastive_loss,
    calibrated_focal_loss,
    hard_negative_logits,
    local_similarity,
    symmetric_infonce,
)


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def close(actual: torch.Tensor, expected: float) -> None:
    assert actual.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def fsc_output(valid: list[list[bool]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A random FSC-CLIP output dict with B=2, D=4, N=2, P=3, L=3, leaves requiring grad; distinct captions."""
    g = torch.Generator().manual_seed(seed)
    b, n, p, length, d = 2, 2, 3, 3, 4

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return {
        "image_features": leaf(b, d),
        "text_features": leaf(b, d),
        "text_token_ids": torch.tensor([[1, 5, 2], [1, 6, 2]]),
        "logit_scale": torch.tensor(3.0, requires_grad=True),
        "hard_negative_features": leaf(b, n, d),
        "hard_negative_mask": torch.tensor(valid),
        "patch_tokens": leaf(b, p, d),
        "text_tokens": leaf(b, length, d),
        "text_token_mask": torch.tensor([[True, True, False], [True, True, True]]),
        "hard_negative_tokens": leaf(b, n, length, d),
        # An invalid negative's tokens may be entirely padding.
        "hard_negative_token_mask": torch.tensor(valid).unsqueeze(-1).expand(b, n, length),
    }


def test_symmetric_infonce_hand_value() -> None:
    logits = torch.tensor([[1.0, 2.0], [0.5, 3.0]])
    image_to_text = (-1 + lse(1, 2)) + (-3 + lse(0.5, 3))
    text_to_image = (-1 + lse(1, 0.5)) + (-3 + lse(2, 3))
    close(symmetric_infonce(logits), (image_to_text / 2 + text_to_image / 2) / 2)


def test_duplicate_answers_leave_the_softmax() -> None:
    l00, l01, l02, l10, l11, l12, l20, l21, l22 = 1.0, 2.0, 0.5, 1.5, 0.2, -1.0, 0.3, 0.7, 2.5
    logits = torch.tensor([[l00, l01, l02], [l10, l11, l12], [l20, l21, l22]])
    rows = [-l00 + lse(l00, l01, l02), -l11 + lse(l10, l11, l12), -l22 + lse(l20, l21, l22)]
    cols = [-l00 + lse(l00, l10, l20), -l11 + lse(l01, l11, l21), -l22 + lse(l02, l12, l22)]
    unmasked = (sum(rows) / 3 + sum(cols) / 3) / 2
    # Samples 0 and 1 share an answer: l01 and l10 disappear from every softmax.
    rows = [-l00 + lse(l00, l02), -l11 + lse(l11, l12), -l22 + lse(l20, l21, l22)]
    cols = [-l00 + lse(l00, l20), -l11 + lse(l11, l21), -l22 + lse(l02, l12, l22)]
    masked = (sum(rows) / 3 + sum(cols) / 3) / 2

    ids = torch.tensor([7, 7, 3])
    same = ids.unsqueeze(0) == ids.unsqueeze(1)
    close(symmetric_infonce(logits), unmasked)
    close(symmetric_infonce(logits, same), masked)
    assert masked != pytest.approx(unmasked)


def test_focallens_loss_uses_scale_and_masks_identical_answers() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    output = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(2.0)}
    # logits = 2 * I @ T^T = [[1.2, 1.6], [1.6, 1.2]], symmetric, so both directions agree.
    loss = FocalLensLoss()({**output, "text_token_ids": torch.tensor([[1, 7, 2], [1, 8, 2]])})
    close(loss["contrastive_loss"], -1.2 + lse(1.2, 1.6))
    # With one shared answer nothing is left to contrast against.
    loss = FocalLensLoss()({**output, "text_token_ids": torch.tensor([[1, 7, 2], [1, 7, 2]])})
    close(loss["contrastive_loss"], 0.0)


def test_batch_contrastive_loss_masks_texts_with_identical_tokens() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [1.5, 0.2, -1.0], [0.3, 0.7, 2.5]])
    image, text = torch.eye(3), logits.T.contiguous()  # image @ text.T == logits
    tokens = torch.tensor([[1, 9, 2], [1, 9, 2], [1, 3, 2]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    loss = batch_contrastive_loss(image, text, torch.tensor(1.0), tokens)
    close(loss, symmetric_infonce(logits, same).item())


def test_invalid_negative_gets_logit_zero_and_stays_in_denominator() -> None:
    logits = hard_negative_logits(
        torch.tensor([2.0]), torch.tensor([[1.0, 5.0]]), torch.tensor([[True, False]])
    )
    assert logits.tolist() == [[2.0, 1.0, 0.0]]
    ce = calibrated_focal_loss(logits, torch.tensor([[True, False]]), gamma=0.0, eps=0.0)
    close(ce, -2 + lse(2, 1, 0))


def test_scr_without_focus_or_smoothing_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 1.0, -0.5], [0.3, 1.2, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    expected = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    close(calibrated_focal_loss(logits, valid, gamma=0.0, eps=0.0), expected.item())


def test_scr_hand_value_with_one_invalid_negative() -> None:
    gamma, eps = 2.0, 0.1
    z = [2.0, 1.0, 0.0]  # third negative invalid: logit 0, target 0
    p = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
    k = 2  # positive + one valid negative
    y = [1 - eps + eps / k, eps / k, 0.0]
    expected = sum(-y[j] * (1 - p[j]) ** gamma * math.log(p[j]) for j in range(3))
    loss = calibrated_focal_loss(torch.tensor([z]), torch.tensor([[True, False]]), gamma, eps)
    close(loss, expected)


def test_rows_without_valid_negatives_are_dropped() -> None:
    valid = torch.tensor([[True, False], [False, False]])
    logits = torch.tensor([[2.0, 1.0, 0.0], [-3.0, 0.0, 0.0]])
    close(calibrated_focal_loss(logits, valid, gamma=0.0, eps=0.0), -2 + lse(2, 1, 0))
    logits[1, 0] = 9.0
    close(calibrated_focal_loss(logits, valid, gamma=0.0, eps=0.0), -2 + lse(2, 1, 0))


def test_no_valid_row_gives_zero_with_a_graph() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = calibrated_focal_loss(logits, torch.zeros(2, 2, dtype=torch.bool), gamma=2.0, eps=0.02)
    loss.backward()
    close(loss, 0.0)
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def test_local_similarity_hand_case() -> None:
    s = 2.0
    patches = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # (B=1, P=3, D=2)
    tokens = torch.tensor([[[[1.0, 0.0], [1.0, 1.0], [5.0, -5.0]]]])  # (B=1, M=1, L=3, D=2)
    mask = torch.tensor([[[True, True, False]]])
    # Token 1: a = [1, 0, 1] -> a^ = [1, 0, 1] -> alpha = [.5, 0, .5]
    #   pooled = .5 * [1, 0] + .5 * [1, 1] = [1, .5];  r1 = s * 1 / sqrt(1.25)
    r1 = s * 1 / math.sqrt(1.25)
    # Token 2: a = [1, 2, 2] -> a^ = [0, 1, 1] -> alpha = [0, .5, .5]
    #   pooled = .5 * [0, 2] + .5 * [1, 1] = [.5, 1.5];  r2 = s * 2 / (sqrt(2) * sqrt(2.5))
    r2 = s * (0.5 + 1.5) / (math.sqrt(2) * math.sqrt(2.5))
    # Token 3 is padding and must not count.
    score = local_similarity(patches, tokens, mask, torch.tensor(s))
    assert score.shape == (1, 1)
    close(score, lse(r1, r2))


def test_flat_attention_pools_uniformly() -> None:
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    tokens = torch.tensor([[[[1.0, 1.0]]]])  # equal attention on both patches
    score = local_similarity(patches, tokens, torch.tensor([[[True]]]), torch.tensor(1.0))
    close(score, 1.0)  # pooled = normalize([.5, .5]) is the token's own direction


def test_attention_is_detached() -> None:
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]], requires_grad=True)
    tokens = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], requires_grad=True)
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    local_similarity(patches, tokens, mask, torch.tensor(2.0)).sum().backward()
    # Patch 3 is every token's least attended patch: alpha = 0, and only the min of the
    # min-max normalisation depends on it, so any gradient would have come through a.
    assert torch.equal(patches.grad[0, 2], torch.zeros(2))

    # Text tokens get exactly the gradient of the score with the attention held fixed:
    # a = [1, 0, -1] -> a^ = [1, .5, 0] and a = [0, 1, -1] -> a^ = [.5, 1, 0].
    alpha = torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.0]])
    fixed_tokens = tokens.detach().clone().requires_grad_()
    pooled = F.normalize(alpha @ patches.detach()[0], dim=-1)
    r = 2.0 * (F.normalize(fixed_tokens[0, 0], dim=-1) * pooled).sum(-1)
    r.logsumexp(0).backward()
    assert fixed_tokens.grad.abs().sum() > 0
    assert torch.allclose(tokens.grad, fixed_tokens.grad)


def test_fsc_clip_terms_are_weighted_pieces() -> None:
    output = fsc_output([[True, False], [True, True]])
    loss = FSCCLIPLoss()(output)
    assert set(loss) == {"contrastive_loss", "global_hn_loss", "local_hn_loss"}
    s, v, t = output["logit_scale"], output["image_features"], output["text_features"]
    close(loss["contrastive_loss"], symmetric_infonce(s * v @ t.T).item())
    repeated = FSCCLIPLoss()({**output, "text_token_ids": torch.tensor([[1, 5, 2], [1, 5, 2]])})
    close(repeated["contrastive_loss"], symmetric_infonce(s * v @ t.T, torch.ones(2, 2, dtype=torch.bool)).item())

    valid = output["hard_negative_mask"]
    negatives = s * torch.einsum("bd,bnd->bn", v, output["hard_negative_features"])
    logits = hard_negative_logits(s * (v * t).sum(-1), negatives, valid)
    close(loss["global_hn_loss"], 0.5 * calibrated_focal_loss(logits, valid, 2.0, 0.02).item())

    plain = FSCCLIPLoss(global_weight=1.0, local_weight=1.0, use_scr=False)(output)
    close(plain["global_hn_loss"], calibrated_focal_loss(logits, valid, 0.0, 0.0).item())
    close(
        loss["local_hn_loss"], 0.2 * FSCCLIPLoss(local_weight=1.0)(output)["local_hn_loss"].item()
    )


@pytest.mark.parametrize("valid", [[[True, False], [True, True]], [[False, False], [False, False]]])
def test_fsc_clip_gradients_are_finite(valid: list[list[bool]]) -> None:
    output = fsc_output(valid)
    loss = FSCCLIPLoss()(output)
    sum(loss.values()).backward()
    for name, tensor in output.items():
        if tensor.requires_grad:
            assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
    if not any(map(any, valid)):
        close(loss["global_hn_loss"], 0.0)
        close(loss["local_hn_loss"], 0.0)
