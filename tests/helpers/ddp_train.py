"""torchrun entry point for the DDP test: the real `focalserve` CLI, plus a record per rank.

Usage: ``torchrun ... ddp_train.py RECORD_DIR train clip ...``. Each rank writes
``RECORD_DIR/rank{R}.json`` with the dataset indices of the batches it was handed and a hash
of its final weights, so the test can check that ranks split the data and stay in sync.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from focalserve_server.cli import main
from focalserve_training import loop
from focalserve_training.models.factory import state_hash


def record_into(directory: Path) -> None:
    rank = int(os.environ["RANK"])
    batches: list[list[int]] = []
    epoch_loader, fit = loop.Trainer._epoch_loader, loop.Trainer.fit

    def recording_epoch_loader(self, epoch, skip_steps):
        loader = epoch_loader(self, epoch, skip_steps)
        batches.extend([int(index) for index in batch] for batch in loader.batch_sampler)
        return loader

    def recording_fit(self):
        path = fit(self)
        # the loader holds the whole epoch; training used only its first steps
        used = batches[: self.total_steps * self.config.accum_steps]
        record = {
            "rank": rank,
            "world_size": self.dist.world_size,
            "batches": used,
            "state_hash": state_hash(self.model),
            "step": self.step,
        }
        (directory / f"rank{rank}.json").write_text(json.dumps(record))
        return path

    loop.Trainer._epoch_loader = recording_epoch_loader
    loop.Trainer.fit = recording_fit


if __name__ == "__main__":
    record_into(Path(sys.argv[1]))
    main(sys.argv[2:])
