"""The contrastive batch spans every process: two real gloo ranks, each holding half of a batch, compute
the loss and (after DDP's averaging) the gradients one process computes over the whole batch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from focalserve_devtools.launch import free_port
from focalserve_training.loop import Objective
from focalserve_training.recipes import DataSpec, ModelSpec, Recipe, create_recipe
from tests.helpers.models import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPES = ("clip", "focallens", "fsc-clip")
WORLD_SIZE = 2
TIMEOUT_S = 120


def make_recipe(name: str) -> Recipe:
    return create_recipe(name, ModelSpec(TINY), DataSpec("colorshape", size=32), seed=3)


def rank_batches(recipe: Recipe) -> list[dict[str, Any]]:
    """Each rank's collated half; rank 1 repeats rank 0's first example, so a caption or answer is
    duplicated across ranks and only a mask computed over the gathered batch leaves it out."""
    dataset = recipe.dataset()
    items = [dataset[index] for index in range(7)]
    return [recipe.collate(items[:4]), recipe.collate([*items[4:], items[0]])]


def whole(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The union batch; fsc-clip's valid negatives are in row-major order of their mask, so they concatenate too."""
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def step(objective: torch.nn.Module, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, dict]:
    terms = objective(batch)
    sum(terms.values()).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"terms": {name: value.detach() for name, value in terms.items()}, "gradients": gradients}


def train_one_step_as_rank(rank: int, port: int, batches: dict[str, list[dict]], out_dir: Path) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        for name in RECIPES:
            recipe = make_recipe(name)
            objective = DistributedDataParallel(Objective(recipe.model, recipe))
            torch.save(step(objective, recipe.model, batches[name][rank]), out_dir / f"{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """Each recipe's per-rank results of one DDP step on two gloo processes."""
    out_dir = tmp_path_factory.mktemp("ranks")
    batches = {name: rank_batches(make_recipe(name)) for name in RECIPES}
    # Forked ranks inherit this process's imports (seconds each to repeat on a small machine), as
    # DataLoader workers do; each rank sets one intra-op thread before computing anything.
    context = mp.start_processes(
        train_one_step_as_rank, (free_port(), batches, out_dir), nprocs=WORLD_SIZE, join=False, start_method="fork"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish in {TIMEOUT_S} s")
    return {
        name: [torch.load(out_dir / f"{name}-{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
        for name in RECIPES
    }


@pytest.mark.parametrize("name", RECIPES)
def test_two_ranks_compute_the_loss_and_gradients_of_one_process_over_both_batches(two_ranks, name):
    recipe = make_recipe(name)
    expected = step(Objective(recipe.model, recipe), recipe.model, whole(rank_batches(recipe)))
    ranks = two_ranks[name]
    for term, value in expected["terms"].items():
        if term == "contrastive_loss":  # one global term: every rank computes all of it
            for result in ranks:
                torch.testing.assert_close(result["terms"][term], value, rtol=0, atol=1e-5)
        else:  # hard-negative terms compare an image with its own captions: each rank averages its half
            mean = sum(result["terms"][term] for result in ranks) / WORLD_SIZE
            torch.testing.assert_close(mean, value, rtol=0, atol=1e-5)
    for result in ranks:
        assert result["gradients"].keys() == expected["gradients"].keys()
        for parameter, gradient in expected["gradients"].items():
            torch.testing.assert_close(result["gradients"][parameter], gradient, rtol=0, atol=1e-5, msg=parameter)
