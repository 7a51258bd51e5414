"""Synthetic scam indicators in realistic per-country formats, with overlaps planted across countries.

Used by ``petanda demo`` and the federation tests: each member gets its own indicators, written the way
its CERT would write them (national phone formats, local bank accounts, e-mails on local domains, URLs,
TRON/Ethereum/Bitcoin wallets, messaging handles), and a known set of indicators is planted in several
members at once, each holder with its own metadata, so a check must find exactly those.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import base58
import bech32
import phonenumbers
from Crypto.Hash import keccak

from client.protocol.canonical import normalize
from node.ingest.csvjson import COLUMNS

__all__ = ["Holding", "Planted", "generate", "write_csv"]

_COUNTRY_TLD = {
    "BN": "bn", "ID": "co.id", "KH": "com.kh", "LA": "la", "MM": "com.mm", "MY": "com.my",
    "PH": "ph", "SG": "sg", "TH": "co.th", "TL": "tl", "VN": "vn",
}  # fmt: skip
_BANKS = {
    "BN": ["BIBD", "BAIB"], "ID": ["BMRI", "CENA", "BRIN"], "KH": ["ABAA", "ACLB"], "LA": ["COEB", "LDBB"],
    "MM": ["KBZB", "AYAB"], "MY": ["MBBE", "CIBB", "PBBE"], "PH": ["BNOR", "BOPI", "MBTC"],
    "SG": ["DBSS", "OCBC", "UOVB"], "TH": ["KASI", "BKKB", "SICO"], "VN": ["BFTV", "VBAA"],
}  # fmt: skip
_CATEGORIES = ("investment", "romance", "job_task", "impersonation_bank", "phishing", "ecommerce", "loan",
               "money_mule", "scam_compound")  # fmt: skip
_PLATFORMS = ("telegram", "line", "wechat", "facebook", "instagram", "tiktok")
_WORDS = (
    "lucky",
    "profit",
    "asia",
    "gold",
    "crypto",
    "job",
    "parcel",
    "bank",
    "secure",
    "prize",
    "trade",
    "vip",
)


@dataclass(frozen=True)
class Holding:
    """One member's record of an indicator: the spelling in its file and its metadata."""

    node_id: str
    value: str
    category: str
    first_seen: date
    last_seen: date
    confidence: int
    tlp: str
    reports: int

    def row(self, kind: str) -> dict[str, str]:
        return {
            "kind": kind,
            "value": self.value,
            "region": self.node_id,
            "category": self.category,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "confidence": str(self.confidence),
            "tlp": self.tlp,
            "reports": str(self.reports),
        }


@dataclass
class Planted:
    """An indicator held by several members; ``visible`` are those a peer may see (not RED/AMBER+STRICT)."""

    kind: str
    canonical: str
    holders: dict[str, Holding] = field(default_factory=dict)

    def visible(self) -> dict[str, Holding]:
        return {n: h for n, h in self.holders.items() if h.tlp not in ("RED", "AMBER+STRICT")}


class _Maker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def phone(self, region: str) -> tuple[str, str]:
        """A valid mobile number of ``region``: (national spelling, canonical E.164)."""
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        assert example is not None, region
        digits = str(example.national_number)
        for _ in range(1000):
            keep = max(2, len(digits) - 6)
            candidate = digits[:keep] + "".join(
                self.rng.choice("0123456789") for _ in range(len(digits) - keep)
            )
            number = phonenumbers.parse(f"+{example.country_code}{candidate}")
            if phonenumbers.is_valid_number(number):
                style = self.rng.choice(
                    (phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
                )
                return phonenumbers.format_number(number, style), normalize(
                    "phone", f"+{example.country_code}{candidate}"
                )
        raise RuntimeError(f"no valid mobile number found for {region}")  # pragma: no cover

    def word(self) -> str:
        return self.rng.choice(_WORDS) + self.rng.choice(_WORDS) + str(self.rng.randrange(100, 999))

    def email(self, region: str) -> str:
        return f"{self.word()}@{self.word()}.{_COUNTRY_TLD[region]}"

    def url(self, region: str) -> str:
        return (
            f"https://{self.word()}-{self.word()}.{_COUNTRY_TLD[region]}/login?id={self.rng.randrange(10**6)}"
        )

    def domain(self, region: str) -> str:
        return f"{self.word()}.{self.rng.choice(('top', 'xyz', 'shop', _COUNTRY_TLD[region]))}"

    def bank(self, region: str) -> str:
        if region == "TL":  # Timor-Leste uses IBANs: bank code 008, 14-digit account, national check digits
            from schwifty import IBAN

            account = "".join(self.rng.choice("0123456789") for _ in range(14))
            return str(IBAN.generate("TL", bank_code="008", account_code=account).formatted)
        account = "".join(self.rng.choice("0123456789") for _ in range(self.rng.choice((10, 12, 13))))
        spaced = "-".join(account[i : i + 4] for i in range(0, len(account), 4))
        return f"{region}:{self.rng.choice(_BANKS[region])}:{spaced}"

    def wallet(self) -> str:
        choice = self.rng.randrange(3)
        payload = bytes(self.rng.randrange(256) for _ in range(20))
        if choice == 0:  # TRON: base58check of 0x41 || 20 bytes
            return base58.b58encode_check(b"\x41" + payload).decode()
        if choice == 1:  # Ethereum with its EIP-55 checksum
            hexaddr = payload.hex()
            digest = keccak.new(digest_bits=256, data=hexaddr.encode()).hexdigest()
            return "0x" + "".join(
                c.upper() if int(d, 16) >= 8 else c for c, d in zip(hexaddr, digest[:40], strict=True)
            )
        address = bech32.encode("bc", 0, list(payload))
        assert address is not None
        return address

    def handle(self) -> str:
        return f"{self.rng.choice(_PLATFORMS)}:{self.word()}"

    def value(self, kind: str, region: str) -> tuple[str, str]:
        if kind == "phone":
            return self.phone(region)
        raw = {
            "email": lambda: self.email(region),
            "url": lambda: self.url(region),
            "domain": lambda: self.domain(region),
            "bank_account": lambda: self.bank(region),
            "crypto_wallet": self.wallet,
            "handle": self.handle,
        }[kind]()
        return raw, normalize(kind, raw, region)

    def holding(self, node_id: str, value: str, *, today: date, tlp: str | None = None) -> Holding:
        first = today - timedelta(days=self.rng.randrange(30, 400))
        return Holding(
            node_id=node_id,
            value=value,
            category=self.rng.choice(_CATEGORIES),
            first_seen=first,
            last_seen=first + timedelta(days=self.rng.randrange(0, 29)),
            confidence=self.rng.randrange(40, 101),
            tlp=tlp or self.rng.choice(("CLEAR", "GREEN", "GREEN", "AMBER")),
            reports=self.rng.randrange(1, 40),
        )


KINDS_USED = ("phone", "email", "url", "domain", "bank_account", "crypto_wallet", "handle")


def _respell(kind: str, value: str, canonical: str, rng: random.Random) -> str:
    """Another spelling of the same indicator, as a second CERT might have written it."""
    if kind == "phone":
        # International spellings only: "00..." is ambiguous across borders (in Thailand or Singapore
        # "006..." is a carrier's IDD, so 00 63 ... reads as +3 9...), and phonenumbers says so.
        return rng.choice(
            (canonical, canonical[:3] + " " + canonical[3:], canonical[:3] + "-" + canonical[3:])
        )
    if kind in ("email", "domain"):
        return value.upper() if rng.random() < 0.5 else value
    if kind == "url":
        return value.replace("https://", "HTTPS://").replace("/login", "/./login") + "#ref"
    return value


def generate(
    ids: list[str], *, per_node: int, planted: int, today: date, seed: int = 20261129
) -> tuple[dict[str, list[dict[str, str]]], list[Planted]]:
    """Rows per member (``per_node`` of its own plus its share of the planted ones) and the planted set."""
    rng = random.Random(seed)  # noqa: S311 - synthetic, reproducible demo data, not secrets
    maker = _Maker(rng)
    rows: dict[str, list[dict[str, str]]] = {node: [] for node in ids}
    seen: set[tuple[str, str]] = set()
    for node in ids:
        while len(rows[node]) < per_node:
            kind = rng.choice(KINDS_USED)
            value, canonical = maker.value(kind, node)
            if (kind, canonical) in seen:
                continue
            seen.add((kind, canonical))
            rows[node].append(maker.holding(node, value, today=today).row(kind))
    plants: list[Planted] = []
    while len(plants) < planted:
        kind = KINDS_USED[len(plants) % len(KINDS_USED)]
        origin = rng.choice(ids)
        value, canonical = maker.value(kind, origin)
        if (kind, canonical) in seen:
            continue
        seen.add((kind, canonical))
        plant = Planted(kind, canonical)
        holders = rng.sample(ids, rng.randrange(2, min(4, len(ids)) + 1))
        for index, node in enumerate(holders):
            # The origin writes it its own way (a national phone format); the others as they received it.
            spelling = value if node == origin else _respell(kind, value, canonical, rng)
            tlp = None
            if len(plants) % 9 == 8 and index == len(holders) - 1:
                tlp = rng.choice(("RED", "AMBER+STRICT"))  # held back: a check must not see this holder
            plant.holders[node] = maker.holding(node, spelling, today=today, tlp=tlp)
            rows[node].append(plant.holders[node].row(kind))
        plants.append(plant)
    for node in ids:
        rng.shuffle(rows[node])
    return rows, plants


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as the CSV that ``petanda-node ingest`` reads."""
    fields = [c for c in COLUMNS if c != "expires_at"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
