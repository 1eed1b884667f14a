"""Token-level outputs of an open_clip CLIP, which FSC-CLIP's local hard-negative loss needs.

open_clip returns pooled features only (its vision tokens come out unprojected), so these
functions run the towers once and return both the pooled features and the projected tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CustomTextCLIP
from open_clip.transformer import text_global_pool

from focalserve_training.models.focallens import BaseCLIP


def _project(x: torch.Tensor, projection: torch.Tensor | torch.nn.Module | None) -> torch.Tensor:
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


def encode_image_tokens(clip: BaseCLIP, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised pooled (B, D), patch tokens after ln_post and proj (B, P, D), no CLS)."""
    visual = clip.visual
    x = visual.transformer(visual._embeds(pixels))
    pooled, tokens = visual._pool(x)
    if visual.final_ln_after_pool:  # open_clip then leaves the tokens un-normed
        tokens = visual.ln_post(tokens)
    return F.normalize(_project(pooled, visual.proj), dim=-1), _project(tokens, visual.proj)


def encode_text_tokens(clip: BaseCLIP, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised pooled (B, D), token features after ln_final + projection (B, L, D), mask (B, L)).

    The mask marks real tokens: the start token excluded, the end token included.
    """
    if isinstance(clip, CustomTextCLIP):
        if not isinstance(clip.text, HFTextEncoder):
            raise TypeError(f"token features of a {type(clip.text).__name__} text tower are not supported")
        return _hf_text_tokens(clip.text, tokens)
    x = clip.token_embedding(tokens) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    pooled = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    end = tokens.argmax(dim=-1, keepdim=True)  # the end token has the largest id in CLIP's vocabulary
    mask = (positions >= 1) & (positions <= end)
    return F.normalize(_project(pooled, clip.text_projection), dim=-1), _project(x, clip.text_projection), mask


def _hf_text_tokens(text: HFTextEncoder, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`encode_text_tokens` for a Hugging Face tower: its pooler for the pooled feature, its
    projection applied to every token; the mask drops [CLS] and padding, keeps [SEP]."""
    attention = (tokens != text.config.pad_token_id).long()
    output = text.transformer(input_ids=tokens, attention_mask=attention)
    pooled = text.proj(text.pooler(output, attention))
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    mask = attention.bool() & (positions >= 1)
    return F.normalize(pooled, dim=-1), text.proj(output.last_hidden_state), mask
