"""Model backends: one job, `infer(model, inputs) -> output` (DESIGN.md section 5)."""

from focalserve_server.backends.base import ModelBackend

__all__ = ["ModelBackend"]
