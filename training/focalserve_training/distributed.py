"""One contrastive batch across every process: each rank's rows gathered, gradients through its own slice.

The loss modules call `gather_batch`; without `torch.distributed` (one process) it returns its input,
so single-process training computes exactly what it computed before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, factor: int) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def gather_batch(tensor: Tensor) -> Tensor:
    """Every rank's rows of `tensor`, in rank order; needs the same shape on every rank (the loop drops
    partial batches).

    Other ranks' rows arrive without a graph and this rank's own tensor takes its slot, as open_clip's
    `gather_features(gather_with_grad=False)` does, so the backward pass needs no communication. Every
    rank then computes the same global loss and DDP averages the ranks' gradients, so this rank's slice
    carries `world_size` times its gradient: the average is then the gradient one process would compute
    over the whole global batch.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    world_size = dist.get_world_size()
    slices = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(slices, tensor.detach().contiguous())
    slices[dist.get_rank()] = _ScaleGradient.apply(tensor, world_size) if tensor.requires_grad else tensor
    return torch.cat(slices)
