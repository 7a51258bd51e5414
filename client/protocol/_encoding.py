"""A tiny deterministic binary encoding: big-endian fixed-width integers, fixed-size byte strings and
length-prefixed UTF-8 strings, read back strictly.

Private to the core; manifests and match-metadata buckets are built from it. Writing a value out of range
is a local fault (:class:`~client.protocol.errors.InputError`); reading bytes that are short, long or
malformed is
a remote one (:class:`~client.protocol.errors.EncodingError`), and both name the field at fault.
"""

from __future__ import annotations

import re
import struct
from typing import Final

from client.protocol.errors import EncodingError, InputError

__all__ = ["NODE_ID_PATTERN", "Reader", "Writer", "check_node_id"]

#: A node id, as in the Bloom filter header: 1 to 16 of ``A-Z``, ``0-9`` and ``-`` (ISO 3166-1 alpha-2
#: codes, or a short id).
NODE_ID_PATTERN: Final = re.compile(r"[A-Z0-9-]{1,16}\Z")

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


def check_node_id(value: object) -> str:
    """Return ``value`` if it is a valid node id, else raise :class:`InputError`."""
    if not isinstance(value, str) or not NODE_ID_PATTERN.match(value):
        raise InputError(f"node id {value!r} is not 1 to 16 characters of A-Z, 0-9 and -")
    return value


class Writer:
    """Accumulates fields in order; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_parts",)

    def __init__(self, prefix: bytes = b"") -> None:
        self._parts: list[bytes] = [prefix] if prefix else []

    def _uint(self, value: int, bits: int, field: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise InputError(f"{field}: {value!r} is not an unsigned {bits}-bit integer")
        self._parts.append(value.to_bytes(bits // 8, "big"))

    def u8(self, value: int, field: str) -> None:
        """Append ``value`` as one byte."""
        self._uint(value, 8, field)

    def u16(self, value: int, field: str) -> None:
        """Append ``value`` as a big-endian 16-bit integer."""
        self._uint(value, 16, field)

    def u32(self, value: int, field: str) -> None:
        """Append ``value`` as a big-endian 32-bit integer."""
        self._uint(value, 32, field)

    def u64(self, value: int, field: str) -> None:
        """Append ``value`` as a big-endian 64-bit integer."""
        self._uint(value, 64, field)

    def fixed(self, value: bytes, size: int, field: str) -> None:
        """Append exactly ``size`` bytes."""
        if not isinstance(value, bytes | bytearray) or len(value) != size:
            raise InputError(f"{field}: expected {size} bytes")
        self._parts.append(bytes(value))

    def blob16(self, value: bytes, field: str) -> None:
        """Append ``u16 length || value``."""
        self.u16(len(value), field + " length")
        self._parts.append(bytes(value))

    def str8(self, value: str, field: str) -> None:
        """Append ``u8 length || UTF-8(value)``; the string must be 1..255 bytes."""
        data = value.encode("utf-8")
        if not 1 <= len(data) <= 255:
            raise InputError(f"{field}: must be 1 to 255 UTF-8 bytes")
        self._parts.append(bytes((len(data),)) + data)

    def node_id(self, value: str, field: str = "node_id") -> None:
        """Append a node id as ``u8 length || ASCII``."""
        self.str8(check_node_id(value), field)

    def getvalue(self) -> bytes:
        """Return the bytes written so far."""
        return b"".join(self._parts)


class Reader:
    """Reads fields in order from ``data``; every failure is an :class:`EncodingError` naming the field."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str, *, offset: int = 0) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EncodingError(f"{what}: expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = offset
        self._what = what

    @property
    def remaining(self) -> int:
        """Number of bytes not read yet."""
        return len(self._data) - self._pos

    def error(self, field: str, reason: str) -> EncodingError:
        """Build the error for ``field`` (the caller raises it)."""
        return EncodingError(f"{self._what}: {field}: {reason}")

    def take(self, size: int, field: str) -> bytes:
        """Read exactly ``size`` bytes."""
        end = self._pos + size
        if end > len(self._data):
            raise self.error(field, f"truncated (need {size} bytes, {self.remaining} left)")
        value = self._data[self._pos : end]
        self._pos = end
        return value

    def u8(self, field: str) -> int:
        """Read one byte."""
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        """Read a big-endian 16-bit integer."""
        return int(_U16.unpack(self.take(2, field))[0])

    def u32(self, field: str) -> int:
        """Read a big-endian 32-bit integer."""
        return int(_U32.unpack(self.take(4, field))[0])

    def u64(self, field: str) -> int:
        """Read a big-endian 64-bit integer."""
        return int(_U64.unpack(self.take(8, field))[0])

    def blob16(self, field: str) -> bytes:
        """Read ``u16 length || value``."""
        return self.take(self.u16(field + " length"), field)

    def str8(self, field: str) -> str:
        """Read ``u8 length || UTF-8`` (1..255 bytes)."""
        size = self.u8(field + " length")
        if size == 0:
            raise self.error(field, "empty")
        raw = self.take(size, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(field, "not UTF-8") from None

    def node_id(self, field: str = "node_id") -> str:
        """Read a node id written by :meth:`Writer.node_id`."""
        value = self.str8(field)
        if not NODE_ID_PATTERN.match(value):
            raise self.error(field, f"{value!r} is not 1 to 16 characters of A-Z, 0-9 and -")
        return value

    def end(self) -> None:
        """Refuse trailing bytes."""
        if self._pos != len(self._data):
            raise self.error("end", f"{self.remaining} trailing bytes")
