"""The one training loop for every recipe: AdamW, warm-up + cosine, gradient accumulation,
AMP on GPU, DDP under `torchrun` (with one contrastive batch across all processes, gathered by
the losses), and checkpoints that resume exactly where they stopped."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from open_clip.model import CLIP
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

from focalserve_training.recipes import EpochBatchSampler, Recipe

MAX_LOGIT_SCALE = math.log(100)  # CLIP's clamp: temperature no lower than 1/100


@dataclass
class TrainConfig:
    output_dir: Path
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 128  # per process and micro-batch; contrastive terms see every process's batch
    accum_steps: int = 1
    lr: float = 5e-4
    new_parameter_lr_scale: float = 10.0  # recipe-created parameters start from scratch
    weight_decay: float = 0.1
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    amp: bool = True  # only takes effect on CUDA
    seed: int = 0
    workers: int = 0
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    log_every: int = 10
    progress: bool = True


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


class Objective(nn.Module):
    """The recipe's loss as a module, so DDP sees (and synchronises) the whole forward pass."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model = model
        self._recipe = recipe

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._recipe.loss(self.model, batch)


def parameter_groups(model: nn.Module, config: TrainConfig, new_prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, embeddings and scales (as open_clip); new parameters get a larger lr."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim >= 2 and "embedding" not in name and "logit_scale" not in name
        groups.setdefault((decay, name.startswith(new_prefixes)), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr": config.lr * (config.new_parameter_lr_scale if new else 1.0),
        }
        for (decay, new), params in groups.items()
    ]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    def __init__(self, recipe: Recipe, config: TrainConfig) -> None:
        self.recipe = recipe
        self.config = config
        self.dist = Distributed.from_env()
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed + self.dist.rank)
        self.model = recipe.model.to(self.device)
        objective = Objective(self.model, recipe).to(self.device)
        self.objective = DistributedDataParallel(objective) if self.dist.world_size > 1 else objective
        self.dataset = recipe.dataset()
        self.sampler = self._batch_sampler()
        self.steps_per_epoch = len(self.sampler) // config.accum_steps
        if self.steps_per_epoch == 0:
            examples = len(cast(Sized, self.dataset))  # every recipe's dataset is map-style
            raise ValueError(
                f"{examples} examples make no full step of {config.batch_size} x {config.accum_steps}"
            )
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config, recipe.new_parameter_names()), betas=config.betas, eps=config.eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, self.total_steps)
        )
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.checkpoints = config.output_dir / "checkpoints"

    def _batch_sampler(self) -> EpochBatchSampler:
        c, d = self.config, self.dist
        custom = self.recipe.batch_sampler(self.dataset, c.batch_size, c.seed, d.world_size, d.rank)
        if custom is not None:
            return custom
        sampler: DistributedSampler[int] = DistributedSampler(
            self.dataset, d.world_size, d.rank, shuffle=True, seed=c.seed, drop_last=True
        )
        return _DistributedBatchSampler(sampler, c.batch_size)

    def _epoch_loader(self, epoch: int, skip_steps: int) -> DataLoader:
        """The epoch's batches from where a resumed run left off (no skipped batch is loaded)."""
        self.sampler.set_epoch(epoch)
        batches = list(self.sampler)[: self.steps_per_epoch * self.config.accum_steps]
        batches = batches[skip_steps * self.config.accum_steps :]
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.recipe.collate,
            num_workers=self.config.workers,
            worker_init_fn=_single_threaded,
        )

    def fit(self) -> Path:
        """Train to `total_steps`, resuming from the latest checkpoint if there is one."""
        self._resume()
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (self.config.progress and self.dist.main),
            desc=f"train {self.recipe.name}",
            dynamic_ncols=True,
        )
        while self.step < self.total_steps:
            epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            micro_batches: list[dict[str, Any]] = []
            for batch in self._epoch_loader(epoch, done_in_epoch):
                micro_batches.append(batch)
                if len(micro_batches) < self.config.accum_steps:
                    continue
                terms = self._optimizer_step(micro_batches)
                micro_batches = []
                self.step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{sum(terms.values()):.4f}")
                self._log(epoch, terms)
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
        progress.close()
        return self.save()

    def _optimizer_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        self.objective.train()
        totals: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            sync: AbstractContextManager[None] = nullcontext()
            if isinstance(self.objective, DistributedDataParallel) and not last:  # DDP: more than one process
                sync = self.objective.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                terms = self.objective(_to(batch, self.device))
                loss = sum(terms.values()) / len(micro_batches)
                self.scaler.scale(loss).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() / len(micro_batches)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._last_lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.scheduler.step()
        with torch.no_grad():
            self._logit_scale().clamp_(0, MAX_LOGIT_SCALE)
        return totals

    def _logit_scale(self) -> nn.Parameter:
        clip: CLIP = getattr(self.model, "clip", self.model)
        return clip.logit_scale

    def _log(self, epoch: int, terms: dict[str, float]) -> None:
        if not self.dist.main or (self.step % self.config.log_every and self.step != self.total_steps):
            return
        record = {
            "step": self.step,
            "epoch": epoch,
            "lr": self._last_lr,
            "loss": sum(terms.values()),
            **terms,
            "logit_scale": self._logit_scale().exp().item(),
        }
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config.output_dir / "train_log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")

    def save(self) -> Path:
        """Write `step_N.pt` and `latest.pt` atomically (main process only)."""
        path = self.checkpoints / f"step_{self.step}.pt"
        if self.dist.main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            state = {
                "family": self.recipe.family,
                "recipe": self.recipe.name,
                "model_name": self.recipe.model_spec.name,
                **self.recipe.checkpoint_fields(),
                "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "rng": torch.get_rng_state(),
                "config": {k: str(v) for k, v in asdict(self.config).items()},
            }
            for target in (path, self.checkpoints / "latest.pt"):
                temporary = target.with_suffix(".tmp")
                torch.save(state, temporary)
                temporary.replace(target)
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    def _resume(self) -> None:
        latest = self.checkpoints / "latest.pt"
        if not latest.exists():
            return
        state = torch.load(latest, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"].cpu())


class _DistributedBatchSampler(BatchSampler):
    """Batches of a DistributedSampler's order, reshuffled by `set_epoch` as a recipe's own sampler is."""

    def __init__(self, sampler: DistributedSampler[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=True)
        self._distributed = sampler

    def set_epoch(self, epoch: int) -> None:
        self._distributed.set_epoch(epoch)


def _single_threaded(worker_id: int) -> None:
    """Data workers decode and transform; torch threads there would fight the training step for cores."""
    torch.set_num_threads(1)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value for key, value in batch.items()
    }


def train(recipe: Recipe, config: TrainConfig) -> Path:
    """Run a recipe to completion; returns the final checkpoint."""
    return Trainer(recipe, config).fit()
