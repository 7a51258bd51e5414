"""Canonical host names, domains and URLs (private: use :func:`client.protocol.canonical.normalize`).

Host names follow UTS 46 (non-transitional) mapping, then IDNA 2008 for every non-ASCII label; URLs follow
Google Safe Browsing's canonicalisation, with the deviations listed in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

import idna

from client.protocol.errors import InvalidIndicator

__all__ = ["canonical_domain", "canonical_host", "canonical_url", "format_ipv6", "parse_ipv4_host"]

_MAX_LABEL: Final = 63
_MAX_HOST: Final = 253
_MAX_URL: Final = 8192  # after escaping; keeps every digest input far below RFC 9497's 65 535 bytes
_ASCII_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_SLASHES = re.compile(rb"/{2,}")
_DOTS = re.compile(r"\.{2,}")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_IPV4_DECIMAL = re.compile(r"[0-9]+")
_IPV4_HEX = re.compile(r"0[xX][0-9A-Fa-f]*")
_IPV4_OCTAL = re.compile(r"0[0-7]+")

# Byte -> its form in a canonical URL: Safe Browsing escapes <= 0x20, >= 0x7F, '#' and '%' (upper-case hex).
_ESCAPE_TABLE: Final = tuple(
    f"%{b:02X}" if b <= 0x20 or b >= 0x7F or b in (0x23, 0x25) else chr(b) for b in range(256)
)


def _ascii_label(kind: str, label: str) -> str:
    """Check one lower-case ASCII label: letters, digits, '-', '_'; an 'xn--' label must be an A-label."""
    if not _ASCII_LABEL.fullmatch(label):
        if not label:
            raise InvalidIndicator(kind, "empty label in host name")
        if len(label) > _MAX_LABEL:
            raise InvalidIndicator(kind, f"label longer than {_MAX_LABEL} characters in host name")
        raise InvalidIndicator(kind, f"label {label!r} has characters not allowed in a host name")
    if label.startswith("xn--"):
        try:
            if idna.encode(idna.decode(label)).decode("ascii") != label:
                raise idna.IDNAError("not the canonical A-label of its U-label")
        except idna.IDNAError as exc:
            raise InvalidIndicator(kind, f"label {label!r} is not a valid IDNA A-label ({exc})") from None
    return label


def canonical_host(kind: str, host: str) -> str:
    """Return a DNS host name as lower-case A-labels without a trailing dot, refusing what IDNA refuses.

    ASCII labels may hold letters, digits, '-' and '_' (real host names use '_' and '--', which IDNA 2008
    forbids but DNS and browsers accept); non-ASCII labels go through UTS 46 mapping and IDNA 2008.
    At least two labels are required and the last one must not be numeric (that would be an IPv4 address).
    """
    if host.endswith("."):
        host = host[:-1]
    if host.isascii():
        host = host.lower()
        labels = host.split(".")
        for label in labels:
            _ascii_label(kind, label)
    else:
        try:
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise InvalidIndicator(kind, f"host name refused by UTS 46 ({exc})") from None
        if mapped.endswith("."):
            mapped = mapped[:-1]
        labels = []
        for label in mapped.split("."):
            if label.isascii():
                labels.append(_ascii_label(kind, label))
                continue
            try:
                labels.append(idna.alabel(label).decode("ascii"))
            except idna.IDNAError as exc:
                raise InvalidIndicator(kind, f"label {label!r} refused by IDNA 2008 ({exc})") from None
        host = ".".join(labels)
    if len(labels) < 2:
        raise InvalidIndicator(
            kind, "host name needs at least two labels (a bare TLD or single name is refused)"
        )
    if _ends_in_number(labels[-1]):
        raise InvalidIndicator(kind, "host name ends in a number: it is an IPv4 address, not a domain")
    if len(host) > _MAX_HOST:
        raise InvalidIndicator(kind, f"host name longer than {_MAX_HOST} characters")
    return host


def canonical_domain(value: str) -> str:
    """Return the canonical form of a bare domain name (no scheme, port, path, user or IP literal)."""
    if any(c in value for c in "/:@?#[]% \t\r\n\\"):
        raise InvalidIndicator("domain", "expected a bare domain name, without scheme, port, path or spaces")
    if _ends_in_number(value.rstrip(".").rsplit(".", 1)[-1]):
        raise InvalidIndicator("domain", "an IP address is not a domain: use kind ipv4 or ipv6")
    return canonical_host("domain", value)


def format_ipv6(address: ipaddress.IPv6Address) -> str:
    """Format an IPv6 address per RFC 5952: compressed lower-case hex, IPv4-mapped as ``::ffff:a.b.c.d``.

    Python's own ``str()`` changed for IPv4-mapped addresses in 3.13; this form does not depend on it.
    """
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return address.compressed


# --- IPv4 hosts, as browsers read them (WHATWG URL Standard, "IPv4 parser") ----------------------------


def _ipv4_number(part: str) -> int | None:
    """Read one dotted part as decimal, 0x-hexadecimal or 0-octal, as browsers do; None if it is none."""
    if _IPV4_HEX.fullmatch(part):
        return int(part[2:], 16) if len(part) > 2 else 0
    if _IPV4_OCTAL.fullmatch(part):
        return int(part[1:], 8)
    if _IPV4_DECIMAL.fullmatch(part):
        return int(part)
    return None


def _ends_in_number(last_label: str) -> bool:
    return last_label.isascii() and last_label != "" and _ipv4_number(last_label) is not None


def parse_ipv4_host(kind: str, host: str) -> str:
    """Return the dotted-decimal form of an IPv4 host written in any form a browser accepts.

    One to four parts, each decimal, ``0x`` hexadecimal or ``0`` octal; the last part fills the remaining
    bytes (``3279880203`` is ``195.127.0.11``; ``0xC0.0250.1`` is ``192.168.0.1``).
    """
    parts = host.split(".")
    if len(parts) > 4:
        raise InvalidIndicator(kind, "IPv4 host with more than four parts")
    numbers = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            raise InvalidIndicator(kind, f"IPv4 host part {part!r} is not a number")
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidIndicator(kind, "IPv4 host out of range")
    address = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        address += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(address))


# --- URLs ----------------------------------------------------------------------------------------------


def _unescape_fully(data: bytes) -> bytes:
    """Percent-unescape repeatedly until no escape is left (Safe Browsing step 'repeatedly unescape')."""
    while True:
        unescaped = _PERCENT_ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), data)
        if unescaped == data:
            return data
        data = unescaped


def _escape(data: bytes) -> str:
    return "".join([_ESCAPE_TABLE[b] for b in data])


def _canonical_path(path: bytes) -> bytes:
    """Collapse runs of '/' and resolve '.' and '..' segments (RFC 3986 remove_dot_segments)."""
    segments = _SLASHES.sub(b"/", path).split(b"/")[1:]
    out: list[bytes] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == b".":
            if i == last:
                out.append(b"")
        elif segment == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def _url_host(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidIndicator("url", "unterminated IPv6 literal in host")
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise InvalidIndicator("url", f"bad IPv6 literal in host ({exc})") from None
        if address.scope_id is not None:
            raise InvalidIndicator("url", "IPv6 zone identifiers are not allowed in a host")
        return f"[{format_ipv6(address)}]"
    host = _DOTS.sub(".", host.strip("."))
    if not host:
        raise InvalidIndicator("url", "URL has no host")
    if _ends_in_number(host.rsplit(".", 1)[-1].lower()):
        return parse_ipv4_host("url", host)
    return canonical_host("url", host)


def canonical_url(value: str) -> str:
    """Return the canonical form of an http or https URL (see ``docs/PROTOCOL.md``)."""
    text = value.strip().replace("\t", "").replace("\r", "").replace("\n", "")
    text = text.split("#", 1)[0]
    scheme_match = _SCHEME.match(text)
    if scheme_match and text[scheme_match.end() : scheme_match.end() + 2] == "//":
        scheme = scheme_match[1].lower()
        rest = text[scheme_match.end() + 2 :]
    elif scheme_match and not text[scheme_match.end() : scheme_match.end() + 1].isdigit():
        scheme = scheme_match[1].lower()
        if scheme in _DEFAULT_PORTS:
            raise InvalidIndicator("url", f"expected '{scheme}://' followed by a host")
        raise InvalidIndicator("url", f"scheme {scheme!r} is not supported (only http and https)")
    else:
        scheme, rest = "http", text
    if scheme not in _DEFAULT_PORTS:
        raise InvalidIndicator("url", f"scheme {scheme!r} is not supported (only http and https)")

    data = _unescape_fully(rest.encode("utf-8"))
    end = len(data)
    for delimiter in (b"/", b"?"):
        found = data.find(delimiter)
        if 0 <= found < end:
            end = found
    authority, data = data[:end], data[end:]
    path, question, query = data.partition(b"?")
    if not path:
        path = b"/"

    authority = authority.rpartition(b"@")[2]
    port: int | None = None
    colon = authority.rfind(b":")
    if colon >= 0 and b"]" not in authority[colon:]:
        port_text = authority[colon + 1 :]
        authority = authority[:colon]
        if port_text:
            if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) <= 65535:
                raise InvalidIndicator("url", f"bad port {port_text.decode('utf-8', 'replace')!r}")
            port = int(port_text)
    try:
        host_text = authority.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidIndicator("url", "host is not valid UTF-8 once percent-unescaped") from None
    if not host_text:
        raise InvalidIndicator("url", "URL has no host")
    host = _url_host(host_text)

    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    url = f"{scheme}://{netloc}{_escape(_canonical_path(path))}"
    if question:
        url += "?" + _escape(query)
    if len(url) > _MAX_URL:
        raise InvalidIndicator("url", f"canonical URL longer than {_MAX_URL} characters")
    return url
