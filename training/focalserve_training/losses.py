"""Training losses for FocalLens and FSC-CLIP.

Each loss is an `nn.Module` that takes the model's output dict and returns a dict of named,
already-weighted scalar terms; the training loop sums the values and logs them by name.
Formulas follow the team's method notes, which follow the public FSC-CLIP code. The in-batch
contrastive term spans every process's batch (`focalserve_training.distributed`); the
hard-negative terms compare each image with its own captions only, so they stay per process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalserve_training.distributed import gather_batch
from focalserve_training.options import FSCCLIPOptions

# Below this spread, a token's attention over patches counts as flat and becomes uniform.
_FLAT_ATTENTION = 1e-6


def symmetric_infonce(logits: Tensor, positive_mask: Tensor | None = None) -> Tensor:
    """Mean of image->text and text->image cross-entropy with the diagonal as target.

    Off-diagonal entries of `positive_mask` are other true matches (e.g. identical answers):
    they are removed from the softmax so the loss does not push them apart.
    """
    labels = torch.arange(logits.shape[0], device=logits.device)
    if positive_mask is not None:
        others = positive_mask & ~torch.eye(len(labels), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(others, float("-inf"))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def same_text_ids(tokens: Tensor) -> Tensor:
    """Equal ids for identical token rows: identical texts in a batch are not each other's negatives."""
    return torch.unique(tokens, dim=0, return_inverse=True)[1]


def batch_contrastive_loss(image: Tensor, text: Tensor, logit_scale: Tensor, text_token_ids: Tensor) -> Tensor:
    """Symmetric InfoNCE over the global batch (every rank's rows), identical texts masked.

    The duplicate mask is computed from the gathered tokens, so a caption or answer repeated on
    another rank is not pushed away either.
    """
    image, text, tokens = gather_batch(image), gather_batch(text), gather_batch(text_token_ids)
    ids = same_text_ids(tokens)
    return symmetric_infonce(logit_scale * image @ text.T, ids[:, None] == ids[None, :])


def hard_negative_logits(positive: Tensor, negatives: Tensor, valid_mask: Tensor) -> Tensor:
    """(B, 1+N) logits with the positive at index 0.

    As in FSC-CLIP, an invalid negative gets logit 0 but stays in the softmax, so every row
    has the same width whatever the generator produced.
    """
    return torch.cat([positive.unsqueeze(1), negatives.masked_fill(~valid_mask, 0.0)], dim=1)


def calibrated_focal_loss(logits: Tensor, valid_mask: Tensor, gamma: float, eps: float) -> Tensor:
    """Selective calibrated regularisation: focal loss on label-smoothed targets, label 0.

    Smoothing mass is shared only among the positive and the valid negatives of each row;
    rows without a valid negative are dropped. Summing and dividing by the kept count (rather
    than indexing) keeps the graph intact and returns 0 when no row is kept.
    With gamma=0 and eps=0 this is plain cross-entropy.
    """
    log_p = logits.log_softmax(dim=1)
    k = 1 + valid_mask.sum(dim=1, keepdim=True)
    targets = torch.cat([1 - eps + eps / k, valid_mask * (eps / k)], dim=1)
    per_row = -(targets * (1 - log_p.exp()).pow(gamma) * log_p).sum(dim=1)
    kept = valid_mask.any(dim=1)
    return (per_row * kept).sum() / kept.sum().clamp_min(1)


def local_similarity(
    patch_tokens: Tensor, text_tokens: Tensor, token_mask: Tensor, logit_scale: Tensor
) -> Tensor:
    """FSC-CLIP local score S(I, T) of each image with each of its own M captions.

    patch_tokens (B,P,D), text_tokens (B,M,L,D), token_mask (B,M,L) -> (B,M).
    Each token pools the patches by its detached, min-max normalised attention, so the
    gradient shapes the embeddings rather than where the text looks. A caption with no
    valid token scores 0 (its row is masked out downstream).
    """
    attention = torch.einsum("bmld,bpd->bmlp", text_tokens, patch_tokens).detach()
    low = attention.amin(dim=-1, keepdim=True)
    spread = attention.amax(dim=-1, keepdim=True) - low
    flat = spread <= _FLAT_ATTENTION
    scaled = torch.where(flat, 1.0, (attention - low) / spread.masked_fill(flat, 1.0))
    # No guard needed: the most attended patch scores 1 (or all do), so the sum is >= 1.
    alpha = scaled / scaled.sum(dim=-1, keepdim=True)
    pooled = F.normalize(torch.einsum("bmlp,bpd->bmld", alpha, patch_tokens), dim=-1)
    token_scores = logit_scale * (F.normalize(text_tokens, dim=-1) * pooled).sum(dim=-1)
    has_tokens = token_mask.any(dim=-1)
    # logsumexp over only -inf is -inf with NaN gradients: leave fully masked captions finite.
    token_scores = token_scores.masked_fill(~token_mask & has_tokens.unsqueeze(-1), float("-inf"))
    return torch.where(has_tokens, token_scores.logsumexp(dim=-1), 0.0)


def _contrastive(output: dict[str, Tensor]) -> Tensor:
    return batch_contrastive_loss(
        output["image_features"], output["text_features"], output["logit_scale"], output["text_token_ids"]
    )


class FocalLensLoss(nn.Module):
    """Symmetric InfoNCE between conditional image embeddings and frozen answer embeddings;
    `text_token_ids` are the answers' tokens, so that identical answers are not negatives."""

    def forward(self, output: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"contrastive_loss": _contrastive(output)}


class FSCCLIPLoss(nn.Module):
    """FSC-CLIP: in-batch InfoNCE (identical captions masked) + weighted global and local hard-negative losses."""

    def __init__(
        self,
        global_weight: float = FSCCLIPOptions.global_hn_weight,
        local_weight: float = FSCCLIPOptions.local_hn_weight,
        focal_gamma: float = FSCCLIPOptions.focal_gamma,
        label_smoothing: float = FSCCLIPOptions.label_smoothing,
        use_scr: bool = True,
    ) -> None:
        super().__init__()
        self.global_weight = global_weight
        self.local_weight = local_weight
        # Without SCR the hard-negative losses are plain cross-entropy, i.e. gamma=0, eps=0.
        self.gamma = focal_gamma if use_scr else 0.0
        self.eps = label_smoothing if use_scr else 0.0

    def forward(self, output: dict[str, Tensor]) -> dict[str, Tensor]:
        valid = output["hard_negative_mask"]
        global_loss = self._hard_negative_loss(self._global_logits(output), valid)
        local_loss = self._hard_negative_loss(self._local_logits(output), valid)
        return {
            "contrastive_loss": _contrastive(output),
            "global_hn_loss": self.global_weight * global_loss,
            "local_hn_loss": self.local_weight * local_loss,
        }

    def _hard_negative_loss(self, logits: Tensor, valid: Tensor) -> Tensor:
        return calibrated_focal_loss(logits, valid, self.gamma, self.eps)

    @staticmethod
    def _global_logits(output: dict[str, Tensor]) -> Tensor:
        scale, image = output["logit_scale"], output["image_features"]
        positive = scale * (image * output["text_features"]).sum(dim=-1)
        negatives = scale * torch.einsum("bd,bnd->bn", image, output["hard_negative_features"])
        return hard_negative_logits(positive, negatives, output["hard_negative_mask"])

    @staticmethod
    def _local_logits(output: dict[str, Tensor]) -> Tensor:
        tokens = torch.cat(
            [output["text_tokens"].unsqueeze(1), output["hard_negative_tokens"]], dim=1
        )
        mask = torch.cat(
            [output["text_token_mask"].unsqueeze(1), output["hard_negative_token_mask"]], dim=1
        )
        scores = local_similarity(output["patch_tokens"], tokens, mask, output["logit_scale"])
        return hard_negative_logits(scores[:, 0], scores[:, 1:], output["hard_negative_mask"])
