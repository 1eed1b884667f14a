"""`focalserve train | eval | export` as a user runs them (`python -m focalserve_server`), and torchrun DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalserve_family import parse_pbtxt
from focalserve_training.models import create_base_clip, load_family_model
from focalserve_training.models.factory import state_hash
from focalserve_training.models.focallens import ConditioningError
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
from tests.helpers.lora import release_checkpoint, with_lora_factors
from tests.helpers.models import TINY

REPOSITORY = Path(__file__).resolve().parents[2]
DDP_SCRIPT = REPOSITORY / "tests" / "helpers" / "ddp_train.py"
TIMEOUT = 240
# One intra-op thread per process: the tiny model gains nothing from more, and on a small
# machine several processes' thread pools would fight for the cores.
ENVIRONMENT = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "GLOO_SOCKET_IFNAME": "lo",
    "PYTHONHASHSEED": "0",
}
TRAIN_ARGS = [
    "--model",
    TINY,
    "--data",
    "colorshape",
    "--synthetic-size",
    "64",
    "--workers",
    "0",
    "--warmup-steps",
    "1",
    "--no-amp",
]


def run(*command: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=REPOSITORY, env=ENVIRONMENT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def focalserve(*arguments: str) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "focalserve_server", *arguments)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("clip_run")
    focalserve(
        "train",
        "clip",
        *TRAIN_ARGS,
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--output-dir",
        str(output_dir),
    )
    return output_dir / "checkpoints" / "step_2.pt"


@pytest.fixture(scope="module")
def focallens_run(tmp_path_factory, clip_checkpoint) -> Path:
    output_dir = tmp_path_factory.mktemp("focallens_run")
    done = focalserve(
        "train",
        "focallens",
        *TRAIN_ARGS,
        "--init-checkpoint",
        str(clip_checkpoint),
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--output-dir",
        str(output_dir),
    )
    assert done.stdout.strip().splitlines()[-1] == str(output_dir / "checkpoints" / "step_2.pt")
    return output_dir


def test_train_clip_writes_a_checkpoint_and_a_log(clip_checkpoint):
    state = torch.load(clip_checkpoint, weights_only=True)
    assert (state["family"], state["recipe"], state["model_name"], state["step"]) == (
        "clip",
        "clip",
        TINY,
        2,
    )
    assert (clip_checkpoint.parent / "latest.pt").exists()
    records = [
        json.loads(line)
        for line in (clip_checkpoint.parents[1] / "train_log.jsonl").read_text().splitlines()
    ]
    assert records[-1]["step"] == 2 and "contrastive_loss" in records[-1]


def test_train_focallens_starts_from_the_clip_checkpoint_and_keeps_its_answer_tower(
    focallens_run, clip_checkpoint
):
    state = torch.load(focallens_run / "checkpoints" / "step_2.pt", weights_only=True)
    assert (state["family"], state["recipe"], state["step"]) == ("focallens", "focallens", 2)
    weights, clip_weights = (
        state["state_dict"],
        torch.load(clip_checkpoint, weights_only=True)["state_dict"],
    )
    assert any(key.startswith("condition_token.") for key in weights)
    # the frozen answer tower is exactly the CLIP checkpoint's text tower; the image tower trains
    for key in (
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "ln_final.weight",
        "transformer.resblocks.0.attn.in_proj_weight",
    ):
        assert torch.equal(weights[f"clip.{key}"], clip_weights[key]), key
    assert not torch.equal(weights["clip.visual.conv1.weight"], clip_weights["visual.conv1.weight"])


def test_eval_writes_results_for_the_focallens_checkpoint_with_a_clip_baseline(
    focallens_run, clip_checkpoint, tmp_path
):
    output_dir = tmp_path / "eval"
    focalserve(
        "eval",
        "--family",
        "focallens",
        "--model",
        TINY,
        "--checkpoint",
        str(focallens_run / "checkpoints" / "step_2.pt"),
        "--baseline-checkpoint",
        str(clip_checkpoint),
        "--images",
        "30",
        "--output-dir",
        str(output_dir),
    )
    results = json.loads((output_dir / "results.json").read_text())
    assert set(results) == {"focallens"}
    retrieval = results["focallens"]["retrieval_map"]
    assert set(retrieval) == {"colour", "shape"}
    for row in retrieval.values():
        # "conditional" plus, possibly, variants of it (e.g. per set of phrasings)
        assert {"unconditional", "conditional"} <= set(row)
        assert all(kind == "unconditional" or kind.startswith("conditional") for kind in row)
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert (output_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_writes_the_focallens_family_from_the_trained_checkpoint(focallens_run, tmp_path):
    checkpoint = focallens_run / "checkpoints" / "step_2.pt"
    repository = tmp_path / "repository"
    focalserve(
        "export",
        "--family",
        "focallens",
        "--model",
        TINY,
        "--checkpoint",
        str(checkpoint),
        "--name",
        "x",
        "--repository",
        str(repository),
    )
    assert sorted(path.name for path in repository.iterdir()) == [
        "x_image",
        "x_instruction",
        "x_text",
    ]
    expected_hash = state_hash(load_family_model("focallens", TINY, checkpoint=checkpoint))
    for role in ("image", "instruction", "text"):
        directory = repository / f"x_{role}"
        assert (directory / "1" / "model.pt").stat().st_size > 0
        config = parse_pbtxt((directory / "config.pbtxt").read_text())
        assert config.name == f"x_{role}"
        assert (
            config.parameters["checkpoint_hash"].string_value == expected_hash
        )  # the trained weights


def test_export_merges_a_released_fsc_clip_lora_checkpoint(tmp_path):
    torch.manual_seed(5)
    base = create_base_clip(TINY).state_dict()
    checkpoint = tmp_path / "fsc-clip-lora.pt"
    torch.save(release_checkpoint(with_lora_factors(base, rank=4), ddp_prefix=True), checkpoint)
    repository = tmp_path / "repository"
    focalserve(
        "export", "--family", "clip", "--model", TINY, "--checkpoint", str(checkpoint),
        "--name", "lora", "--repository", str(repository),
    )
    merged = state_hash(load_family_model("clip", TINY, checkpoint=checkpoint))
    unmerged = create_base_clip(TINY)
    unmerged.load_state_dict(base)
    assert merged != state_hash(unmerged)
    for role in ("image", "text"):
        config = parse_pbtxt((repository / f"lora_{role}" / "config.pbtxt").read_text())
        assert config.parameters["checkpoint_hash"].string_value == merged


def refused(*arguments: str) -> str:
    """stderr of a `focalserve` command that must stop with a message, not a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "focalserve_server", *arguments],
        cwd=REPOSITORY, env=ENVIRONMENT, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-4000:]
    return done.stderr


def test_export_refuses_a_checkpoint_of_another_architecture_naming_the_config_it_needs(clip_checkpoint, tmp_path):
    stderr = refused(
        "export", "--family", "clip", "--model", "ViT-B-32", "--checkpoint", str(clip_checkpoint),
        "--name", "x", "--repository", str(tmp_path),
    )
    assert f"focalserve export: {clip_checkpoint} does not fit ViT-B-32" in stderr
    assert "use --model focalserve-tiny" in stderr


def test_train_stops_before_training_when_llava_images_are_missing(tmp_path):
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    records = [{"image": f"coco/{index}.jpg", "conversations": turns} for index in range(7)]
    data = tmp_path / "llava.json"
    data.write_text(json.dumps(records))
    stderr = refused(
        "train", "focallens", *TRAIN_ARGS[:2], "--data", f"llava:{data}", "--image-root", str(tmp_path),
        "--output-dir", str(tmp_path / "run"),
    )
    assert "7 referenced image files do not exist" in stderr and str(tmp_path / "coco" / "0.jpg") in stderr
    assert "--skip-missing-images" in stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_trains_on_two_gloo_processes_with_disjoint_batches_and_equal_replicas(tmp_path):
    output_dir, records = tmp_path / "ddp_run", tmp_path / "records"
    records.mkdir()
    run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(DDP_SCRIPT),
        str(records),
        "train",
        "clip",
        *TRAIN_ARGS,
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--output-dir",
        str(output_dir),
    )

    state = torch.load(output_dir / "checkpoints" / "step_2.pt", weights_only=True)
    assert state["step"] == 2
    assert not any(key.startswith("module.") for key in state["state_dict"])
    ranks = [json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in ranks] == [2, 2]
    assert [record["step"] for record in ranks] == [2, 2]
    seen = [[index for batch in record["batches"] for index in batch] for record in ranks]
    assert all(len(batch) == 8 for record in ranks for batch in record["batches"])
    assert [len(indices) for indices in seen] == [16, 16]
    assert not set(seen[0]) & set(seen[1]), "both ranks trained on the same examples"
    # gradients are all-reduced, so both replicas end equal, and equal to the saved checkpoint
    assert ranks[0]["state_hash"] == ranks[1]["state_hash"]
    model = load_family_model("clip", TINY, checkpoint=output_dir / "checkpoints" / "step_2.pt")
    assert state_hash(model) == ranks[0]["state_hash"]


def test_train_focallens_with_readout_conditioning_records_it_in_the_checkpoint(clip_checkpoint, tmp_path):
    focalserve("train", "focallens", *TRAIN_ARGS, "--conditioning", "readout", "--init-checkpoint",
               str(clip_checkpoint), "--batch-size", "16", "--max-steps", "1", "--output-dir", str(tmp_path))
    checkpoint = tmp_path / "checkpoints" / "step_1.pt"
    assert torch.load(checkpoint, weights_only=True)["conditioning"] == "readout"
    assert load_family_model("focallens", TINY, checkpoint=checkpoint).conditioning == "readout"


def test_train_refuses_readout_conditioning_for_a_plain_clip():
    """Checked in-process (no training subprocess); the CLI prints the same error without a traceback
    (`_ends_cleanly`), as it does for every ConditioningError."""
    with pytest.raises(ConditioningError, match="conditioning readout is for the focallens recipe, not clip"):
        create_recipe("clip", ModelSpec(TINY, conditioning="readout"), DataSpec("colorshape", size=8))
