"""Exported FocalLens families: what each role's file holds, and fused against hand-written attention.

    .venv/bin/python -m benchmarks.export_bench [--models ViT-B-32 ViT-L-14-336] [--speed-models ViT-B-32]
        [--device cpu] [--json out.json]

Sizes: the family exported (libtorch flavour, as deployed on GPUs) from random weights, which
have the same shapes as trained ones; "whole model" is what every role's file held before the
exports became lean. Attention: the conditional image model traced twice, once with the fused
scaled-dot-product attention it is exported with and once with the hand-written gated softmax
that training uses, timed side by side on the same inputs (gates half open, as after training).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import command_of, machine, markdown_table
from focalserve_family import model_specs
from focalserve_training.export import (
    ConditionalImageEncoder,
    PixelNormalisation,
    example_inputs,
    export_family,
    family_metadata,
    to_torchscript,
)
from focalserve_training.models import FocalLensCLIP, load_family_model
from focalserve_training.models.focallens import Attention, fused_gated_attention, gated_attention

MB = 1e6


def file_sizes(model: FocalLensCLIP, model_name: str) -> dict[str, float]:
    """MB on disk per role, and the whole model's state dict."""
    with tempfile.TemporaryDirectory() as directory:
        paths = export_family(model, "focallens", model_name, "size", Path(directory), "libtorch")
        sizes = {path.name.removeprefix("size_"): (path / "1" / "model.pt").stat().st_size / MB for path in paths}
    sizes["whole model"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / MB
    return sizes


ROUNDS = 3  # the two forms alternate, so drifting machine load falls on both alike


def timed_calls(script: torch.jit.ScriptModule, inputs: tuple[torch.Tensor, ...], seconds: float) -> tuple[int, float]:
    """(calls, elapsed seconds) of forward passes for about `seconds`; synchronised on CUDA."""
    synchronise = torch.cuda.synchronize if inputs[0].is_cuda else (lambda: None)
    synchronise()
    calls, started = 0, time.perf_counter()
    while calls < 1000 and (calls == 0 or time.perf_counter() - started < seconds):
        script(*inputs)
        calls += 1
    synchronise()
    return calls, time.perf_counter() - started


def attention_speed(
    model: FocalLensCLIP, model_name: str, batch: int, device: torch.device, seconds: float
) -> dict[str, float]:
    """Images/s of the fused and the hand-written form, each timed in ROUNDS turns after two warm-up calls."""
    metadata = family_metadata(model, "focallens", "bench", model_name)
    spec = model_specs(metadata, max_batch_size=batch)["image"]
    inputs = tuple(tensor.to(device) for tensor in example_inputs(spec.inputs, batch))
    forms: dict[str, Attention] = {"fused": fused_gated_attention, "hand-written": gated_attention}
    normalise = PixelNormalisation(metadata.image_mean, metadata.image_std).to(device)
    scripts = {name: to_torchscript(ConditionalImageEncoder(model, normalise, attention), inputs)
               for name, attention in forms.items()}
    totals = {name: [0, 0.0] for name in forms}
    with torch.inference_mode():
        for script in scripts.values():
            for _ in range(2):
                script(*inputs)
        for _ in range(ROUNDS):
            for name, script in scripts.items():
                calls, elapsed = timed_calls(script, inputs, seconds / ROUNDS)
                totals[name][0] += calls
                totals[name][1] += elapsed
    return {name: calls * batch / elapsed for name, (calls, elapsed) in totals.items()}


def measure(model_name: str, batches: list[int], device: torch.device, seconds: float) -> dict[str, Any]:
    """Sizes, and speeds at `batches` (none: sizes only)."""
    model = load_family_model("focallens", model_name)
    with torch.no_grad():
        model.condition_token.gates.fill_(0.5)
    sizes = file_sizes(model, model_name)
    model = model.to(device)
    return {"model": model_name, "sizes_mb": sizes,
            "images_per_second": {batch: attention_speed(model, model_name, batch, device, seconds)
                                  for batch in batches}}


def tables(rows: list[dict[str, Any]], device: str) -> dict[str, str]:
    sizes = markdown_table(
        ["family", "image (MB)", "instruction (MB)", "text (MB)", "all three", "before: each role (whole model)"],
        [[row["model"], *(row["sizes_mb"][role] for role in ("image", "instruction", "text")),
          sum(row["sizes_mb"][role] for role in ("image", "instruction", "text")),
          row["sizes_mb"]["whole model"]] for row in rows],
    )
    speed = markdown_table(
        ["family", "device", "batch", "fused (img/s)", "hand-written (img/s)", "fused / hand-written"],
        [[row["model"], device, batch, forms["fused"], forms["hand-written"], forms["fused"] / forms["hand-written"]]
         for row in rows for batch, forms in row["images_per_second"].items()],
    )
    return {"export_sizes": sizes, "attention": speed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14-336"])
    parser.add_argument("--speed-models", nargs="*", default=["ViT-B-32"],
                        help="the models whose attention speed is measured too (a ViT-L on 2 CPU cores takes minutes)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=9.0, help="timed part of each form's speed measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    args = parser.parse_args(argv)
    rows = [measure(name, args.batches if name in args.speed_models else [], torch.device(args.device), args.seconds)
            for name in args.models]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    generated = tables(rows, args.device)
    for table in generated.values():
        print(table, end="\n\n")
    command = command_of("benchmarks.export_bench", argv)
    return {"command": command, "machine": machine(), "tables": generated}


if __name__ == "__main__":
    main()
