"""Model backends: one job, `infer(model, inputs) -> output` (docs/design.md section 5)."""

from focalserve_server.backends.base import ModelBackend

__all__ = ["ModelBackend"]
