"""Protocol versions: which ones this code speaks, what a call's version header says, which one two
parties use.

Every call carries the version its caller speaks (``docs/PROTOCOL.md``, "Versions"); a call that carries
none is version :data:`UNLABELLED` (2), because version-2 nodes send nothing. A node serves a set of
versions (the current one and the previous, :data:`SUPPORTED`, unless its configuration narrows it) and
answers every call with that set, so its peers use the highest version both speak (:func:`negotiate`).
A call in a version the node does not serve is refused (:class:`~client.protocol.errors.UnsupportedVersion`,
FAILED_PRECONDITION on the wire) with a message naming both.

What each version adds:

- 1: filters, manifests (format 1), metadata buckets fetched on a hit.
- 2: records travel at sync, manifest format 2, manifest gossip, deltas.
- 3: every call carries its version and every answer the versions served (negotiation); messages of
  version 3 (recovery statements, ``GetHeld``) are sent only to a peer that speaks 3. No signed byte of
  version 2 changed: its vectors hold for version 3; the recovery statement has its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from client.protocol.errors import InputError, UnsupportedVersion

__all__ = [
    "PREVIOUS_VERSION",
    "PROTOCOL_VERSION",
    "SUPPORTED",
    "UNLABELLED",
    "check_served",
    "format_versions",
    "negotiate",
    "parse_version",
    "parse_versions",
]

#: The protocol version this code speaks natively (the highest it knows).
PROTOCOL_VERSION: Final = 3
#: The version before it, still served so that a federation can upgrade one member at a time.
PREVIOUS_VERSION: Final = 2
#: The versions this code can serve and speak.
SUPPORTED: Final[frozenset[int]] = frozenset({PREVIOUS_VERSION, PROTOCOL_VERSION})
#: The version of a call, or an answer, that carries no version at all: what version-2 nodes send.
UNLABELLED: Final = 2

#: Longest version text read from a peer (a version is a small decimal number).
_MAX_TEXT = 64


def parse_version(text: str | None) -> int:
    """The version a call's header names (``None``: the header is absent, so :data:`UNLABELLED`).

    Raises:
        InputError: the text is not a positive decimal number.
    """
    if text is None:
        return UNLABELLED
    if not (0 < len(text) <= 9 and text.isascii() and text.isdigit()) or int(text) == 0:
        raise InputError(f"protocol version {text[:_MAX_TEXT]!r} is not a positive whole number")
    return int(text)


def parse_versions(text: str | None) -> frozenset[int]:
    """The versions an answer's header says its node serves (``"2,3"``); absent: ``{UNLABELLED}``.

    Raises:
        InputError: the text is not a comma-separated list of positive whole numbers.
    """
    if text is None:
        return frozenset({UNLABELLED})
    if len(text) > _MAX_TEXT:
        raise InputError(f"protocol versions {text[:_MAX_TEXT]!r}…: too long")
    return frozenset(parse_version(part.strip()) for part in text.split(","))


def format_versions(versions: Iterable[int]) -> str:
    """``{3, 2}`` as ``"2,3"``: what an answer's header carries."""
    return ",".join(str(v) for v in sorted(set(versions)))


def negotiate(ours: Iterable[int], theirs: Iterable[int]) -> int | None:
    """The highest version both parties speak, or None when they share none."""
    common = set(ours) & set(theirs)
    return max(common) if common else None


def check_served(version: int, served: Iterable[int], *, node_id: str) -> None:
    """Refuse a call of ``version`` that node ``node_id``, serving ``served``, does not serve.

    Raises:
        UnsupportedVersion: naming the caller's version and the versions served.
    """
    versions = frozenset(served)
    if version not in versions:
        shown = ", ".join(str(v) for v in sorted(versions))
        raise UnsupportedVersion(
            f"protocol version {version} is not served by {node_id}, which serves version"
            f"{'s' if len(versions) > 1 else ''} {shown}",
            version=version,
            served=versions,
        )
