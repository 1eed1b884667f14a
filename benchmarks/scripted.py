"""A family's exported TorchScript models run in-process, with open_clip's preprocessing and tokenizer.

The raw-forward measurement, the PyTriton server and the naive server all run the exported
files the gateway serves, through this one loader, so their outputs are comparable with the
gateway's and none of them gets a faster or slower copy of the model.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focalserve_family import families_from_configs, read_repository
from focalserve_family.text_towers import create_tokenizer
from focalserve_server.backends.embedded import DTYPES, OPTIMISE_GRAPHS, running_exported
from focalserve_server.images import ImagePreprocessor


class ScriptedFamily:
    """The image and instruction models of one FocalLens family, loaded from a model repository."""

    def __init__(self, repository: Path, name: str, device: str = "cpu", dtype: str = "float32",
                 optimise: bool = OPTIMISE_GRAPHS) -> None:
        self.spec = families_from_configs(read_repository(repository))[name]
        self.device = torch.device(device)
        self._dtype = DTYPES[dtype]  # mixed precision, as the embedded backend runs it
        self._optimise = optimise  # TorchScript's optimising executor: off, as in the embedded backend, unless told
        self.image_model = _load(repository, self.spec.models["image"].name, self.device)
        self.instruction_model = _load(repository, self.spec.models["instruction"].name, self.device)
        self.preprocess = ImagePreprocessor(self.spec)  # open_clip's eval transform with the family's metadata
        self._tokenizer = create_tokenizer(self.spec.tokenizer, self.spec.context_length)

    def pixels(self, images: Sequence[bytes]) -> torch.Tensor:
        """Encoded images -> the image model's (N, 3, S, S) input: PIL decode, then open_clip's transform."""
        return torch.from_numpy(np.stack([self.preprocess(_decode(data)) for data in images]))

    def conditions(self, instructions: Sequence[str]) -> torch.Tensor:
        """Instructions -> (N, C) conditions; each distinct instruction goes through the model once."""
        distinct, rows = np.unique(np.asarray(instructions, dtype=object), return_inverse=True)
        with running_exported(self.device, self._dtype, self._optimise):
            encoded = self.instruction_model(self._tokenizer([str(text) for text in distinct]).to(self.device))
        return encoded.float().cpu()[torch.from_numpy(rows.reshape(-1))]

    def embed(self, pixels: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels under (N, C) conditions -> (N, D) L2-normalised float32 embeddings on the CPU.

        Inputs start on the CPU and results come back to it, as the gateway's do, so on a GPU the
        copies (and the wait for the device) are part of what is timed.
        """
        with running_exported(self.device, self._dtype, self._optimise):
            return self.image_model(pixels.to(self.device), conditions.to(self.device)).float().cpu()

    def embed_requests(self, images: Sequence[bytes], instructions: Sequence[str]) -> np.ndarray:
        """What one /embed call does for its pairs: decode, preprocess, encode instructions, image forward."""
        return self.embed(self.pixels(images), self.conditions(instructions)).numpy()


def _load(repository: Path, model: str, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        return torch.jit.load(str(repository / model / "1" / "model.pt"), map_location=device).eval()


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
