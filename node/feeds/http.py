"""HTTP for live feeds: every request has a connect and read timeout, a whole-answer deadline and a size cap.

``taxii2-client`` and PyMISP both speak through a ``requests`` session and read whole answers without a
limit or, by default, a timeout. :class:`BoundedAdapter` is mounted under them: it forces the timeouts,
streams the body, stops at ``max_bytes`` or at the deadline with a :class:`FeedError` naming the setting,
and keeps the headers of the last answer (TAXII's ``X-TAXII-Date-Added-Last``). A server that accepts a
connection and never answers, one that trickles bytes, and one that sends a gigabyte all end in a clear
error within about ``timeout_s`` x 4, never in a hang or an exhausted memory.
"""

from __future__ import annotations

import time
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from client.protocol.errors import PetandaError

__all__ = [
    "DEADLINE_FACTOR",
    "BoundedAdapter",
    "FeedError",
    "describe_request_error",
    "first_line",
    "session_for",
]

#: A whole answer must arrive within this many ``timeout_s`` (each read waits at most ``timeout_s``).
DEADLINE_FACTOR: Final = 4
_CHUNK: Final = 64 * 1024


class FeedError(PetandaError):
    """A live feed could not be read: unreachable, too slow, too large, refused, or not its format."""


class BoundedAdapter(HTTPAdapter):
    """A ``requests`` transport adapter with forced timeouts, a deadline and a cap on the body."""

    def __init__(self, *, timeout_s: float, max_bytes: int) -> None:
        super().__init__(max_retries=0)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.last_headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        deadline = time.monotonic() + self.timeout_s * DEADLINE_FACTOR
        response = super().send(
            request,
            stream=True,
            timeout=(self.timeout_s, self.timeout_s),
            verify=verify,
            cert=cert,
            proxies=proxies,
        )
        where = _where(request.url)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise FeedError(
                    f"{where}: the answer is {int(declared)} bytes, over {self.max_bytes} "
                    "(max_response_bytes); lower page_size or raise max_response_bytes"
                )
            body = bytearray()
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > self.max_bytes:
                    raise FeedError(
                        f"{where}: the answer is over {self.max_bytes} (max_response_bytes); "
                        "lower page_size or raise max_response_bytes"
                    )
                if time.monotonic() > deadline:
                    raise FeedError(
                        f"{where}: the answer took over {self.timeout_s * DEADLINE_FACTOR:.0f} s "
                        "(4 x timeout_s) to arrive"
                    )
        finally:
            response.close()
        response._content = bytes(body)
        response._content_consumed = True
        self.last_headers = response.headers
        return response


def _where(url: str | None) -> str:
    """A URL without its query (which may hold filters, never secrets, but is long)."""
    return (url or "?").split("?", 1)[0]


def session_for(
    adapter: BoundedAdapter, *, verify: bool | str, cert: tuple[str, str] | None
) -> requests.Session:
    """A session whose every request goes through ``adapter``; ``verify``: a CA file or True."""
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = verify
    session.trust_env = False  # no proxy or CA bundle from the environment: the config says what is used
    if cert is not None:
        session.cert = cert
    return session


def describe_request_error(error: requests.RequestException, timeout_s: float) -> str:
    """One line saying why a request failed (timeouts name the setting)."""
    url = error.request.url if error.request is not None else None
    where = _where(url if isinstance(url, str) else None)
    if isinstance(error, requests.ConnectTimeout):
        return f"{where}: no connection within {timeout_s:g} s (timeout_s)"
    if isinstance(error, requests.ReadTimeout):
        return f"{where}: no answer within {timeout_s:g} s (timeout_s)"
    if isinstance(error, requests.exceptions.SSLError):
        return f"{where}: TLS failed: {first_line(error)}"
    if isinstance(error, requests.ConnectionError):
        return f"{where}: cannot connect: {first_line(error)}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        reason = error.response.reason or ""
        hint = (
            " (check username and password_file, or api_key_file)"
            if error.response.status_code
            in (
                401,
                403,
            )
            else ""
        )
        return f"{where}: HTTP {error.response.status_code} {reason}{hint}".rstrip()
    return f"{where}: {first_line(error)}"


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
