"""`make test`'s plan: is the demo family there without training, restoring it from the cache if need be?

Exit 0 when the family is in the repository, or was just copied there from this machine's cache
of builds of the same code; 1 when it must be trained. `make test` gives the tests that mostly
wait to the demo's lane only in the first case: a lane that trains has no time to spare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from focalserve_training import demo_cache
from focalserve_training.demo import MODEL


def demo_is_ready(repository: Path, checkpoint: Path, name: str = "demo") -> bool:
    if (repository / f"{name}_image" / "1" / "model.pt").is_file():
        return True
    return demo_cache.restore(demo_cache.build_key(name, MODEL), name, repository, checkpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="where the served FocalLens checkpoint goes")
    args = parser.parse_args(argv)
    raise SystemExit(0 if demo_is_ready(args.repository, args.checkpoint) else 1)


if __name__ == "__main__":
    main()
