"""FocalLens: an open_clip CLIP whose image tower also reads an instruction.

The instruction is encoded by a copy of CLIP's text tower (the *instruction tower*), and its
pooled embedding enters the ViT as one extra token after the patch tokens. The original
text tower stays frozen and embeds the expected answers (and, at serving time, text queries),
so conditional image embeddings and text queries share one space.

Why a gated token: any extra token changes every other token's attention (it sits in the
softmax denominator even when its input is zero), so a zero-initialised projection alone does
not make the model equal to its base CLIP at step 0. Each layer therefore scales the
condition token's attention weight by a learned gate initialised to 0: at initialisation the
condition is invisible and the conditional embedding is exactly the base image embedding,
and training opens the gates as far as the condition helps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from focalserve_family import CONDITIONINGS, Conditioning

BaseCLIP: TypeAlias = CLIP | CustomTextCLIP  # open_clip's own text tower, or a Hugging Face one


class ConditioningError(ValueError):
    """A conditioning asked of a model that cannot have it (a plain CLIP, or a checkpoint trained with another)."""


def text_side(clip: BaseCLIP) -> BaseCLIP:
    """The CLIP without its image tower and logit scale: a view sharing the text tower's modules.

    It is what the instruction tower copies and what a text role exports, so neither carries
    the image weights (for ViT-B-32 that is two thirds of the file).
    """
    view = copy.copy(clip)
    view._modules = {name: module for name, module in clip._modules.items() if name != "visual"}
    view._parameters = {name: value for name, value in clip._parameters.items() if not name.startswith("logit_")}
    view._buffers = dict(clip._buffers)
    return view


class InstructionTower(nn.Module):
    """A trainable copy of a CLIP's text tower: instruction tokens -> condition vector."""

    def __init__(self, clip: BaseCLIP) -> None:
        super().__init__()
        self.text = copy.deepcopy(text_side(clip))
        self.text.requires_grad_(True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled instruction embedding, shape (B, C)."""
        return self.text.encode_text(tokens, normalize=True)


class ConditionToken(nn.Module):
    """Turns a condition vector into the extra ViT token and owns the per-layer gates."""

    def __init__(self, condition_dim: int, width: int, layers: int) -> None:
        super().__init__()
        self.projection = nn.Linear(condition_dim, width)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.position = nn.Parameter(torch.randn(width) * width**-0.5)
        self.gates = nn.Parameter(torch.zeros(layers))

    def open_gates(self) -> torch.Tensor:
        """Gates clamped at 0 in the forward pass, with the gradient passed straight through:
        a plain clamp (or ReLU) has zero gradient at 0, so gates starting there would never open."""
        return self.gates + (self.gates.clamp(min=0) - self.gates).detach()

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, 1, width), before the ViT's pre-norm."""
        return (self.projection(condition) + self.position).unsqueeze(1)


def _heads(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of batch-first `x`, each (B, heads, L, head width)."""
    return _split_heads(attn, F.linear(x, attn.in_proj_weight, attn.in_proj_bias))


def _split_heads(attn: nn.MultiheadAttention, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, 3 W) projected tokens -> queries, keys and values, each (B, heads, L, head width)."""
    batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    q, k, v = qkv.reshape(batch, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def _merge_heads(attn: nn.MultiheadAttention, out: torch.Tensor) -> torch.Tensor:
    return attn.out_proj(_join_heads(out))


def _join_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, head width) -> (B, L, W), before the output projection."""
    batch, heads, length, head_width = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_width)


def gated_attention(attn: nn.MultiheadAttention, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Self-attention where the last token's attention weight is multiplied by `gate`.

    Equivalent to adding log(gate) to that key's logits, but differentiable at gate = 0, so
    training uses this form.
    """
    q, k, v = _heads(attn, x)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    weights = torch.cat([weights[..., :-1], weights[..., -1:] * gate], dim=-1)
    return _merge_heads(attn, (weights / weights.sum(dim=-1, keepdim=True)) @ v)


def fused_gated_attention(attn: nn.MultiheadAttention, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`gated_attention` for inference, through PyTorch's fused scaled-dot-product attention.

    The gate becomes an additive bias log(gate) on the condition key (-inf while the gate is
    closed), which is the same softmax; the fused kernels never materialise the weights. Not
    for training: the gradient of log at 0 is infinite.
    """
    q, k, v = _heads(attn, x)
    bias = F.pad(gate.log().reshape(1, 1), (x.shape[1] - 1, 0)).to(q.dtype)  # (1, L): one row for every query
    return _merge_heads(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


Attention = Callable[[nn.MultiheadAttention, torch.Tensor, torch.Tensor], torch.Tensor]


def gated_block(
    block: ResidualAttentionBlock, x: torch.Tensor, gate: torch.Tensor, attention: Attention = gated_attention
) -> torch.Tensor:
    """open_clip's residual block with a gated attention in place of its attention."""
    x = x + block.ls_1(attention(block.attn, block.ln_1(x), gate))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def conditional_image_features(
    visual: VisionTransformer,
    condition_token: ConditionToken,
    pixels: torch.Tensor,
    condition: torch.Tensor,
    attention: Attention = gated_attention,
) -> torch.Tensor:
    """Pooled, projected (unnormalised) image features under `condition`.

    A function of the two parts it needs rather than a method, so that the exported image
    model can hold the image tower and the condition token alone.
    """
    x = visual._embeds(pixels)
    x = torch.cat([x, visual.ln_pre(condition_token(condition).to(x.dtype))], dim=1)
    gates = condition_token.open_gates()
    for index, block in enumerate(visual.transformer.resblocks):
        x = gated_block(block, x, gates[index], attention)
    pooled, _ = visual._pool(x[:, :-1])
    return pooled @ visual.proj if visual.proj is not None else pooled


def _per_stream(
    layer: Callable[[torch.Tensor], torch.Tensor], trunk: torch.Tensor, readout: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`layer` (a per-token map) over the trunk's and the readouts' tokens as one set of rows, split back.

    One matrix product per weight, not one per stream: a readout's two tokens alone re-read every
    weight matrix, which on a CPU made one condition cost nearly a second trunk pass.
    """
    width = trunk.shape[-1]
    rows = layer(torch.cat([trunk.reshape(-1, width), readout.reshape(-1, width)]))
    split = trunk.shape[0] * trunk.shape[1]
    return (rows[:split].reshape(trunk.shape[0], trunk.shape[1], -1),
            rows[split:].reshape(readout.shape[0], readout.shape[1], -1))


def _readout_attention(
    attn: nn.MultiheadAttention, readout_qkv: torch.Tensor, patch_keys: torch.Tensor, patch_values: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """Attention of each readout's two tokens over [itself, its image's patches, its condition (gated)],
    before the output projection.

    `readout_qkv` is (M, 2, 3 W), the projected class-token copy and condition token; the patches'
    keys and values are (M, heads, P, head width), one image's per readout. The copy stands where
    the trunk's class token stands, so with the gate closed it attends exactly as that token does.
    The softmax is written out (as in `gated_attention`) to stay differentiable at gate 0.
    """
    q, k, v = _split_heads(attn, readout_qkv)
    q = q * q.shape[-1] ** -0.5
    own = q @ k.transpose(-2, -1)  # (M, heads, 2, 2): columns are the copy's key, the condition's key
    patches = q @ patch_keys.transpose(-2, -1)  # (M, heads, 2, P)
    peak = torch.maximum(own.amax(dim=-1, keepdim=True), patches.amax(dim=-1, keepdim=True))
    own, patches = (own - peak).exp(), (patches - peak).exp()
    own = torch.cat([own[..., :1], own[..., 1:] * gate], dim=-1)
    total = own.sum(dim=-1, keepdim=True) + patches.sum(dim=-1, keepdim=True)
    return _join_heads((own @ v + patches @ patch_values) / total)


def _readout_block(
    block: ResidualAttentionBlock, x: torch.Tensor, readout: torch.Tensor, image_index: torch.Tensor,
    gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: open_clip's residual block on the trunk `x`, and the readouts beside it, reading
    their images' patch keys and values of that layer."""
    attn = block.attn
    qkv, readout_qkv = _per_stream(
        lambda tokens: F.linear(block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias), x, readout)
    q, keys, values = _split_heads(attn, qkv)
    attended, readout_attended = _per_stream(
        attn.out_proj, _join_heads(F.scaled_dot_product_attention(q, keys, values)),
        _readout_attention(attn, readout_qkv, keys[image_index, :, 1:], values[image_index, :, 1:], gate))
    x, readout = x + block.ls_1(attended), readout + block.ls_1(readout_attended)
    mlp, readout_mlp = _per_stream(lambda tokens: block.mlp(block.ln_2(tokens)), x, readout)
    return x + block.ls_2(mlp), readout + block.ls_2(readout_mlp)


def readout_image_features(
    visual: VisionTransformer,
    condition_token: ConditionToken,
    pixels: torch.Tensor,
    conditions: torch.Tensor,
    image_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readout conditioning: the trunk runs once per image, a light readout stream per condition.

    `pixels` are N images, `conditions` M condition vectors, `image_index` (M,) the image each
    condition reads. The trunk is the base ViT, untouched by any condition; each readout (a copy
    of the class token plus the condition token) runs through the same layers, attending to its
    image's patch keys and values at every layer, and no trunk token attends to it. Returns the
    unconditional (N, D) and conditional (M, D) features, projected and unnormalised.
    """
    x = visual._embeds(pixels)
    readout = torch.cat([x[image_index, :1], visual.ln_pre(condition_token(conditions).to(x.dtype))], dim=1)
    gates = condition_token.open_gates()
    for index, block in enumerate(visual.transformer.resblocks):
        x, readout = _readout_block(block, x, readout, image_index, gates[index])
    unconditional = visual.ln_post(x[:, 0])
    conditional = visual.ln_post(readout[:, 0])
    if visual.proj is None:
        return unconditional, conditional
    return unconditional @ visual.proj, conditional @ visual.proj


def text_embedding_dim(clip: BaseCLIP) -> int:
    """Width of the text tower's pooled output, which is the condition's dimension C."""
    if isinstance(clip, CustomTextCLIP):
        return int(clip.text.output_dim)
    projection = clip.text_projection
    if projection is None:
        return clip.transformer.width
    return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[-1]


class FocalLensCLIP(nn.Module):
    """Conditional CLIP: `encode_image(pixels, condition)` under an encoded instruction."""

    def __init__(self, clip: BaseCLIP, conditioning: Conditioning = "full") -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, not {conditioning!r}")
        visual = clip.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ValueError("FocalLens needs an open_clip ViT image tower without attention pooling")
        if not all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks):
            raise ValueError("FocalLens supports open_clip's standard ResidualAttentionBlock ViTs")
        if not visual.transformer.batch_first:
            raise ValueError("FocalLens expects a batch-first ViT (open_clip >= 2.24)")
        if conditioning == "readout" and visual.pool_type != "tok":
            raise ValueError("readout conditioning reads the class token: the ViT must pool with pool_type 'tok'")
        self.conditioning = conditioning
        self.clip = clip
        self.instruction_tower = InstructionTower(clip)
        self.condition_token = ConditionToken(
            text_embedding_dim(clip), visual.transformer.width, len(visual.transformer.resblocks)
        )

    @property
    def condition_dim(self) -> int:
        return self.condition_token.projection.in_features

    def answer_tower_parameters(self) -> list[nn.Parameter]:
        """The frozen text tower: everything of `clip` that is not the image tower or the scale."""
        return [p for n, p in self.clip.named_parameters() if not n.startswith(("visual.", "logit_"))]

    def freeze_answer_tower(self) -> None:
        for parameter in self.answer_tower_parameters():
            parameter.requires_grad_(False)

    def encode_instruction(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.instruction_tower(tokens)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The frozen answer tower: embeds answers during training and text queries when serving."""
        return self.clip.encode_text(tokens, normalize=normalize)

    def encode_image(self, pixels: torch.Tensor, condition: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        visual = self.clip.visual
        assert isinstance(visual, VisionTransformer)  # checked in __init__
        if self.conditioning == "readout":
            # batches repeat images (one per condition asked of it): the trunk runs once per distinct image
            distinct, image_index = torch.unique(pixels.flatten(1), dim=0, return_inverse=True)
            _, features = readout_image_features(
                visual, self.condition_token, distinct.view(-1, *pixels.shape[1:]), condition, image_index
            )
        else:
            features = conditional_image_features(visual, self.condition_token, pixels, condition)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, pixels: torch.Tensor, instruction_tokens: torch.Tensor, answer_tokens: torch.Tensor
    ) -> dict[str, Any]:
        """The output dict the FocalLens loss takes (answer ids are added by the loop).

        Batches repeat instructions and answers (several phrasings per condition, shared
        answers), so each distinct text is encoded once and gathered back per example.
        """
        condition = per_distinct_row(self.encode_instruction, instruction_tokens)
        return {
            "image_features": self.encode_image(pixels, condition),
            "text_features": per_distinct_row(self.encode_text, answer_tokens),
            "logit_scale": self.clip.logit_scale.exp(),
        }


def per_distinct_row(encode: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """`encode(tokens)`, running the text tower once per distinct row: training batches repeat texts
    (captions of one class, an instruction's answers), and a pretrained tower costs per row."""
    distinct, index = torch.unique(tokens, dim=0, return_inverse=True)
    return encode(distinct)[index]
