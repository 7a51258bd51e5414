"""The one exception tree of Petanda.

Every error the project raises on purpose derives from :class:`PetandaError`. Faults of the local
party (bad input, bad configuration) are kept apart from faults of a remote party (an artefact or answer
that fails verification), so that a caller can tell "you typed it wrong" from "a peer misbehaved"::

    PetandaError
    ├── InputError                      local: a value, file or setting we were given is wrong
    │   ├── InvalidIndicator            a value that does not parse as its kind (never hashed as is)
    │   ├── UnknownKind                 a kind name that does not exist
    │   ├── ConfigError                 a configuration key or file is wrong (names key and file)
    │   ├── ImportError_                a row of an ingest file is wrong (names file and line)
    │   └── NotFound                    what was asked for (a version, an epoch, a bucket) is not here
    ├── ProtocolError                   remote: something received fails the protocol
    │   ├── EncodingError               bytes that are not a valid encoding (group element, filter, …)
    │   ├── ProofError                  a VOPRF DLEQ proof does not verify
    │   ├── DecryptionError             match metadata that does not decrypt or authenticate
    │   ├── ManifestError               a signed manifest is refused
    │   │   ├── SignatureError          the signature does not verify
    │   │   ├── WrongNodeError          the manifest or filter belongs to another node
    │   │   ├── RollbackError           its version is older than one already accepted
    │   │   ├── ChainError              its previous-manifest hash does not match the last accepted
    │   │   ├── ExpiredError            it has expired
    │   │   ├── ImplausibleError        signed, but no honest publisher signs it (too many buckets, …)
    │   │   └── FilterMismatchError     a filter's hash differs from the one the manifest signs
    │   └── MerkleError                 an RFC 9162 proof does not verify
    │       ├── InclusionProofError
    │       └── ConsistencyProofError
    ├── StoreError                      the node's store failed or is inconsistent
    └── PeerError                       a call to a peer failed
        ├── PeerUnavailable             could not be reached in time
        ├── RateLimited                 the peer refused: quota or rate limit
        ├── PermissionDenied            the peer refused: our role may not call that
        └── UnsupportedVersion          the peer refused: it does not serve our protocol version

The command-line tools catch only :class:`PetandaError` and print ``str(error)``: every message is one
line a person can act on, naming the field, file or line at fault.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ChainError",
    "ConfigError",
    "ConsistencyProofError",
    "DecryptionError",
    "EncodingError",
    "ExpiredError",
    "FilterMismatchError",
    "ImplausibleError",
    "ImportError_",
    "InclusionProofError",
    "InputError",
    "InvalidIndicator",
    "ManifestError",
    "MerkleError",
    "NotFound",
    "PeerError",
    "PeerUnavailable",
    "PermissionDenied",
    "PetandaError",
    "ProofError",
    "ProtocolError",
    "RateLimited",
    "RollbackError",
    "SignatureError",
    "StoreError",
    "UnknownKind",
    "UnsupportedVersion",
    "WrongNodeError",
]


class PetandaError(Exception):
    """Base of every error Petanda raises on purpose."""


# --- local faults -------------------------------------------------------------------------------------


class InputError(PetandaError, ValueError):
    """A value, file or setting given to us is wrong."""


class UnknownKind(InputError):
    """A kind name that is not one of the indicator kinds."""

    def __init__(self, kind: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown kind {kind!r}; expected one of: {', '.join(known)}")
        self.kind = kind


class InvalidIndicator(InputError):
    """A value that does not parse as an indicator of its kind."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid {kind}: {reason}")
        self.kind = kind
        self.reason = reason


class ConfigError(InputError):
    """A configuration key or file is wrong."""

    def __init__(self, reason: str, *, key: str | None = None, path: str | None = None) -> None:
        where = ":".join(p for p in (path, key) if p)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.key = key
        self.path = path
        self.reason = reason


class ImportError_(InputError):  # the trailing underscore avoids the builtin ImportError
    """A row or object of an ingest file is wrong."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason


class NotFound(InputError, LookupError):
    """What was asked for (a manifest version, an OPRF epoch, a bucket) does not exist here."""


# --- remote faults ------------------------------------------------------------------------------------


class ProtocolError(PetandaError):
    """Something received from another party fails the protocol."""


class EncodingError(ProtocolError, ValueError):
    """Bytes that are not a valid encoding of what they claim to be."""


class ProofError(ProtocolError):
    """A VOPRF DLEQ proof does not verify: the server did not use the key it published."""


class DecryptionError(ProtocolError):
    """Match metadata that does not decrypt or authenticate under the key derived from the digest."""


class ManifestError(ProtocolError):
    """A signed manifest (or a filter it covers) is refused."""


class ImplausibleError(ManifestError):
    """A validly signed manifest that no honest publisher signs (reader-side plausibility)."""


class SignatureError(ManifestError):
    """The manifest's Ed25519 signature does not verify under the node's key."""


class WrongNodeError(ManifestError):
    """The manifest or filter belongs to another node than the one expected."""


class RollbackError(ManifestError):
    """The manifest's version is not newer than one already accepted."""


class ChainError(ManifestError):
    """The manifest's previous-manifest hash does not match the last accepted manifest."""


class ExpiredError(ManifestError):
    """The manifest has expired."""


class FilterMismatchError(ManifestError):
    """A filter's hash differs from the hash the manifest signs."""


class MerkleError(ProtocolError):
    """An RFC 9162 Merkle proof does not verify."""


class InclusionProofError(MerkleError):
    """An inclusion proof does not lead to the expected root."""


class ConsistencyProofError(MerkleError):
    """A consistency proof does not show that the old tree is a prefix of the new one."""


# --- operational faults -------------------------------------------------------------------------------


class StoreError(PetandaError):
    """The node's store failed or is inconsistent."""


class PeerError(PetandaError):
    """A call to a peer failed."""


class PeerUnavailable(PeerError):
    """The peer could not be reached within the deadline."""


class RateLimited(PeerError):
    """The peer refused the call: rate limit or daily quota exhausted.

    Attributes:
        retry_after_s: seconds until the call may pass (``math.inf``: never, as asked); ``None`` when
            unknown. A node sends it as ``retry-after-ms`` trailing metadata.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermissionDenied(PeerError):
    """The peer refused the call: our certificate's role may not make it."""


class UnsupportedVersion(PeerError):
    """The call is in a protocol version its receiver does not serve (FAILED_PRECONDITION on the wire).

    Attributes:
        version: the caller's version, when known.
        served: the versions the receiver serves, when known (empty otherwise).
    """

    def __init__(
        self, message: str, *, version: int | None = None, served: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(message)
        self.version = version
        self.served = served
