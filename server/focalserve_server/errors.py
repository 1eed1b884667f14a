"""Domain errors, each with its HTTP status and a stable code; rendered as {"error": {...}}."""

from __future__ import annotations


class FocalServeError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(FocalServeError):
    status, code = 422, "invalid_request"


class InvalidImage(FocalServeError):
    status, code = 422, "invalid_image"


class ImageTooLarge(FocalServeError):
    status, code = 413, "image_too_large"


class InvalidInstruction(FocalServeError):
    status, code = 422, "invalid_instruction"


class TooManyInputs(FocalServeError):
    status, code = 413, "too_many_inputs"


class UnknownModel(FocalServeError):
    status, code = 404, "unknown_model"


class Unauthorized(FocalServeError):
    status, code = 401, "unauthorized"


class PayloadTooLarge(FocalServeError):
    status, code = 413, "payload_too_large"


class NotFound(FocalServeError):
    status, code = 404, "not_found"


class Conflict(FocalServeError):
    status, code = 409, "conflict"


class Overloaded(FocalServeError):
    """A queue is full: the client should retry after a pause rather than wait unboundedly."""

    status, code = 503, "overloaded"


class DeadlineExceeded(FocalServeError):
    """The request ran past `request_timeout_s`: the server is too busy to answer in time."""

    status, code = 503, "deadline_exceeded"


class BackendUnavailable(FocalServeError):
    """The model backend (e.g. Triton) cannot be reached or is not ready."""

    status, code = 503, "backend_unavailable"
