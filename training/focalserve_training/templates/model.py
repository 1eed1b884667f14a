"""Triton python-backend model that runs the TorchScript file beside it.

Written into every exported model directory by `focalserve export --backend python`. It
serves the same `model.pt` that the libtorch backend would, so CPU hosts and tests run the
exported artefact itself. Requests that Triton's dynamic batcher delivers together are
concatenated into one forward pass.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]
        on_gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        model_file = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.module = torch.jit.load(str(model_file), map_location=self.device).eval()

    def execute(self, requests):
        try:
            per_request = [
                [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
                for request in requests
            ]
            sizes = [arrays[0].shape[0] for arrays in per_request]
            batched = [
                torch.from_numpy(np.concatenate(column)).to(self.device) for column in zip(*per_request)
            ]
            with torch.inference_mode():
                output = self.module(*batched).float().cpu().numpy()
        except Exception as error:  # one response per request, the error inside it
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))) for _ in requests]
        responses = []
        for chunk in np.split(output, np.cumsum(sizes)[:-1]):
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(chunk))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
