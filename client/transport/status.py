"""The one table between gRPC status codes and the exception tree, each way.

A node aborts a call with :func:`status_for` of the exception its handler raised (and a
``retry-after-ms`` trailer for :class:`~client.protocol.errors.RateLimited`); a caller turns the status
it receives back into an exception with :func:`error_from_rpc`. Node and tools use these and nothing else.
"""

from __future__ import annotations

import math
from typing import Final

import grpc

from client.protocol import errors
from client.protocol.versions import parse_versions
from client.transport.versions import SERVED_KEY

__all__ = [
    "ERROR_OF",
    "MAX_RETRY_AFTER_MS",
    "RETRY_AFTER_KEY",
    "STATUS_OF",
    "error_class",
    "error_from_rpc",
    "retry_after_of",
    "retry_trailer",
    "status_for",
    "unsupported_version",
]

#: The project's exceptions → gRPC status codes; the most specific class wins (method resolution order).
STATUS_OF: Final[dict[type[BaseException], grpc.StatusCode]] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnsupportedVersion: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PeerUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StoreError: grpc.StatusCode.UNAVAILABLE,
}

#: gRPC status codes → the exception a caller raises; any other code is a :class:`PeerError`.
ERROR_OF: Final[dict[grpc.StatusCode, type[errors.PetandaError]]] = {
    grpc.StatusCode.UNAVAILABLE: errors.PeerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.PeerUnavailable,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.RateLimited,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InputError,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.UnsupportedVersion,
}

#: Trailing metadata key of the seconds-to-wait of a refused call, in whole milliseconds.
RETRY_AFTER_KEY: Final = "retry-after-ms"
#: The largest ``retry-after-ms`` sent (one day); a wait that can never end sends no trailer at all.
MAX_RETRY_AFTER_MS: Final = 86_400_000


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code for ``error`` from :data:`STATUS_OF` (INTERNAL when absent)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def retry_trailer(error: BaseException) -> tuple[tuple[str, str], ...]:
    """The ``retry-after-ms`` trailer for a refusal that says when to retry, else nothing."""
    retry = getattr(error, "retry_after_s", None)
    if isinstance(retry, int | float) and math.isfinite(retry) and retry >= 0:
        return ((RETRY_AFTER_KEY, str(min(MAX_RETRY_AFTER_MS, math.ceil(retry * 1000)))),)
    return ()


def retry_after_of(error: grpc.RpcError) -> float | None:
    """The seconds a refused call asks the caller to wait (its ``retry-after-ms`` trailer), if any."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0, int(value)) / 1000
            except (TypeError, ValueError):
                return None
    return None


def unsupported_version(error: grpc.RpcError, message: str) -> errors.UnsupportedVersion:
    """A FAILED_PRECONDITION refusal as :class:`UnsupportedVersion`, with the versions the refusing
    node serves (its ``petanda-protocol-versions`` trailer) and the version our call carried, if known."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    served = dict(trailers or ()).get(SERVED_KEY)
    try:
        versions = parse_versions(served) if served is not None else frozenset()
    except errors.InputError:
        versions = frozenset()
    return errors.UnsupportedVersion(message, served=versions)


def error_class(code: grpc.StatusCode | None) -> type[errors.PetandaError]:
    """The exception class a caller raises for a call that ended with ``code``."""
    return ERROR_OF.get(code, errors.PeerError) if code is not None else errors.PeerError


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no detail"


def error_from_rpc(error: grpc.RpcError, target: str) -> errors.PetandaError:
    """Turn a failed call to a node into a one-line :class:`PetandaError` (to raise ``from None``).

    The class comes from :data:`ERROR_OF`; the message names ``target`` and keeps the node's own words
    (INVALID_ARGUMENT carries only them: they name the field at fault). A refusal carries the node's
    ``retry-after-ms`` as ``retry_after_s``.
    """
    code = error.code() if hasattr(error, "code") else None
    raw = error.details() if hasattr(error, "details") else None
    details = _one_line(str(raw) if raw else "")
    cls = error_class(code)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"node {target} unreachable: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"node {target} did not answer in time: {details}"
    elif cls is errors.PermissionDenied:
        message = f"the node refused your certificate: {details}"
    elif cls is errors.RateLimited:
        return errors.RateLimited(
            f"the node refused: rate limit or quota exhausted: {details}", retry_after_s=retry_after_of(error)
        )
    elif cls is errors.UnsupportedVersion:
        return unsupported_version(error, f"node {target} refused this tool's protocol version: {details}")
    elif cls in (errors.InputError, errors.NotFound):
        message = details
    else:
        message = f"node {target} failed: {code.name if code is not None else 'unknown error'}: {details}"
    return cls(message)
