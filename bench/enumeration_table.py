"""How long an enumeration of a member's phone numbers takes at the default OPRF quotas.

For each ASEAN member: the number of mobile national significant numbers that ``phonenumbers``' metadata
accepts (an exact count of the digit strings its pattern matches at its possible lengths: an upper bound
of the numbers actually allocated), the same with fixed-line numbers, and the days one peer at the
per-peer quota (``limits.oprf_daily_quota``) and ten colluding peers (capped by the holder-wide quota,
``limits.oprf_holder_daily_quota``) need to evaluate every mobile number once. Prints a Markdown table
(pasted into ``docs/PROTOCOL.md``, "What a hostile member can learn").

    .venv/bin/python -m bench.enumeration_table [--peer-quota N] [--holder-quota N] [--peers N]
"""

from __future__ import annotations

import argparse

import phonenumbers

from client.protocol.enumeration import HOME_SPACE_TYPES, numbering_space
from node.config import LimitsSection
from node.testbed import ASEAN

NAMES = {
    "BN": "Brunei",
    "ID": "Indonesia",
    "KH": "Cambodia",
    "LA": "Laos",
    "MM": "Myanmar",
    "MY": "Malaysia",
    "PH": "Philippines",
    "SG": "Singapore",
    "TH": "Thailand",
    "TL": "Timor-Leste",
    "VN": "Viet Nam",
}


def _days(space: int, per_day: int) -> str:
    if per_day <= 0:
        return "never"
    days = space / per_day
    return f"{days:,.0f}" + (f" ({days / 365.25:,.1f} y)" if days >= 365.25 else "")


def table(peer_quota: int, holder_quota: int, peers: int) -> list[str]:
    """The Markdown lines of the table."""
    colluders = min(peers * peer_quota, holder_quota)
    lines = [
        f"| member | mobile numbers | + fixed line | days, one peer | days, {peers} colluding peers |",
        "|---|---:|---:|---:|---:|",
    ]
    for region in ASEAN:
        mobile = numbering_space(region, ("mobile",))
        both = numbering_space(region, HOME_SPACE_TYPES)
        code = phonenumbers.country_code_for_region(region)
        lines.append(
            f"| {region} {NAMES[region]} (+{code}) | {mobile:,} | {both:,} | {_days(mobile, peer_quota)} "
            f"| {_days(mobile, colluders)} |"
        )
    return lines


def main() -> None:
    defaults = LimitsSection()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-quota", type=int, default=defaults.oprf_daily_quota)
    parser.add_argument("--holder-quota", type=int, default=defaults.oprf_holder_daily_quota)
    parser.add_argument("--peers", type=int, default=10)
    args = parser.parse_args()
    print(
        f"phonenumbers {phonenumbers.__version__}; per-peer quota {args.peer_quota:,} a kind a day, "
        f"holder-wide quota {args.holder_quota:,} a kind a day, {args.peers} colluding peers "
        f"({min(args.peers * args.peer_quota, args.holder_quota):,} a day)"
    )
    print()
    print("\n".join(table(args.peer_quota, args.holder_quota, args.peers)))


if __name__ == "__main__":
    main()
