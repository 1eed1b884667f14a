"""Batches that hold several instructions of the same image, as FocalLens trains.

Putting k instructions of one image in a batch makes the contrastive loss separate the
*conditions* of one image, not just different images. Each epoch, every image's items are
shuffled and cut into chunks of ``instructions_per_image``; the chunks are spread over the
epoch in random order and laid end to end (a chunk whose image is already in the batch
being filled waits for the next batch), then cut into batches. When every image has a
multiple of k items, each batch holds ``batch_size // k`` images with k items each (an
image repeats only if the epoch's tail leaves no other); otherwise an image's last,
smaller chunk shifts later chunks, and a chunk may straddle two batches. Every item is
used once per epoch either way, so ``__len__`` does not depend on the epoch.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Hashable, Iterator, Sequence

from torch.utils.data import Sampler


class GroupedInstructionBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; deterministic given ``(seed, epoch)``.

    With ``num_replicas > 1`` all ranks build the same global batch order and rank r takes
    batches r, r + R, ...; ``batch_size`` is per rank. With ``drop_last`` the shares are
    disjoint and trailing batches that would leave ranks uneven are dropped; without it
    the order wraps around so every rank gets the same number of batches (as in
    DistributedSampler), which may repeat a few batches.
    """

    def __init__(
        self,
        image_ids: Sequence[Hashable],
        batch_size: int,
        instructions_per_image: int,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if min(batch_size, instructions_per_image) < 1 or batch_size % instructions_per_image:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"instructions_per_image ({instructions_per_image})"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.batch_size = batch_size
        self.instructions_per_image = instructions_per_image
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._groups = _group_indices(image_ids)
        self._num_items = len(image_ids)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch for a fresh order; the same epoch gives the same order."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return (self._num_items // self.batch_size) // self.num_replicas
        return math.ceil(math.ceil(self._num_items / self.batch_size) / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        total = len(self) * self.num_replicas
        if batches:
            batches = (batches * math.ceil(total / len(batches)))[:total]
        yield from batches[self.rank :: self.num_replicas]

    def _global_batches(self) -> list[list[int]]:
        order = self._pack(self._shuffled_chunks())
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def _shuffled_chunks(self) -> list[tuple[int, list[int]]]:
        """(image, indices) chunks of at most k items, in a random order where an image's
        j-th of n chunks lies at a random point of the epoch's j-th n-th: siblings rarely
        meet, and no image is biased toward the start or end of the epoch."""
        rng = random.Random(f"{self.seed}:{self.epoch}")  # str seeds hash stably across runs
        k = self.instructions_per_image
        keyed = []
        for image, indices in enumerate(self._groups):
            shuffled = rng.sample(indices, len(indices))
            chunks = [shuffled[i : i + k] for i in range(0, len(shuffled), k)]
            for j, chunk in enumerate(chunks):
                keyed.append(((j + rng.random()) / len(chunks), image, chunk))
        keyed.sort(key=lambda item: item[:2])
        return [(image, chunk) for _, image, chunk in keyed]

    def _pack(self, chunks: list[tuple[int, list[int]]]) -> list[int]:
        """Lay chunks end to end, holding back a chunk whose image is already in the batch
        being filled; held-back chunks go first once their image is free again."""
        order: list[int] = []
        open_images: set[int] = set()  # images in the batch being filled
        waiting: dict[int, deque[list[int]]] = {}  # at most one key per open image

        def place(image: int, indices: list[int]) -> None:
            start = len(order)
            order.extend(indices)
            if len(order) // self.batch_size != start // self.batch_size:
                open_images.clear()
            if len(order) % self.batch_size:
                open_images.add(image)

        for image, indices in chunks:
            waiting.setdefault(image, deque()).append(indices)
            while (free := next((i for i in waiting if i not in open_images), None)) is not None:
                place(free, waiting[free].popleft())
                if not waiting[free]:
                    del waiting[free]
        for image, queue in waiting.items():  # only the epoch's tail can repeat an image
            for indices in queue:
                place(image, indices)
        return order


def _group_indices(image_ids: Sequence[Hashable]) -> list[list[int]]:
    """Dataset indices per image, images in order of first appearance (for determinism)."""
    groups: dict[Hashable, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(index)
    return list(groups.values())
