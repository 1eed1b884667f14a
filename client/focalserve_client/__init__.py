"""FocalServe Python client and the HTTP API schemas shared with the server.

    from focalserve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        vectors = client.embed(["cat.jpg", "car.jpg"], "what colour is it?")  # float32 (2, D)

Depends on httpx, pydantic and numpy only; Pillow is used when present (PIL images, numpy
arrays) and tqdm for progress bars.
"""

from focalserve_client.client import DEFAULT_MAX_INPUTS, AsyncClient, Client
from focalserve_client.errors import (
    ConditionFailedError,
    FocalServeError,
    InsufficientStorageError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    ServerUnreachableError,
    deprecated_name,
)
from focalserve_client.schemas import (
    CollectionInfo,
    ConditionInfo,
    ItemInfo,
    ItemPage,
    ModelInfo,
    SearchResponse,
    SearchResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_INPUTS",
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "ConditionFailedError",
    "ConditionInfo",
    "FocalServeError",
    "InsufficientStorageError",
    "InvalidRequestError",
    "ItemInfo",
    "ItemPage",
    "ModelInfo",
    "NotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "SearchResponse",
    "SearchResult",
    "ServerError",
    "ServerUnreachableError",
]


def __getattr__(name: str) -> type[FocalServeError]:
    """`ConnectionError` and `TimeoutError`, the errors' old names, with a DeprecationWarning."""
    return deprecated_name(__name__, name)
