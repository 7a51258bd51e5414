"""What a peer can put into our logs and what our errors give away: details of a peer's errors are cut
and made printable, and a record that does not authenticate does not name its tag."""

from __future__ import annotations

from datetime import date

import grpc
import pytest

from client.protocol.errors import DecryptionError
from client.protocol.metadata import IndicatorMeta, open_record, seal, tag_of
from node import peers
from node.peers import DETAIL_MAX, printable


class _Failed(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return self._details


def test_peer_supplied_details_are_cut_and_made_printable() -> None:
    error = peers.peer_error("TH", _Failed("forged\n2026 fork resolved\x1b[2J" + "x" * 1000))
    text = str(error)
    assert text.isprintable() and "\n" not in text and "\x1b" not in text
    assert "forged?2026 fork resolved?[2J" in text
    assert len(text) <= len("TH: INTERNAL: ") + DETAIL_MAX and text.endswith("\u2026")
    assert printable("short and fine") == "short and fine"
    assert len(printable("y" * DETAIL_MAX)) == DETAIL_MAX and printable("y" * DETAIL_MAX) == "y" * DETAIL_MAX


def test_a_record_that_does_not_authenticate_does_not_name_its_tag() -> None:
    digest, wrong = bytes(range(32)), bytes(32)
    meta = IndicatorMeta.from_bytes(_meta_bytes())
    record = seal(digest, meta, node_id="TH", epoch=1, kind="domain", tier=1)
    with pytest.raises(DecryptionError) as error:
        open_record(wrong, record, node_id="TH", epoch=1, kind="domain", tier=1)
    message = str(error.value)
    assert tag_of(digest).hex() not in message and record.tag.hex()[:8] not in message
    assert "TH" in message and "\n" not in message


def _meta_bytes() -> bytes:
    return IndicatorMeta(
        category="phishing",
        first_seen=date(2026, 1, 1),
        last_seen=date(2026, 2, 1),
        confidence=50,
        tlp="GREEN",
        reports=1,
    ).to_bytes()
