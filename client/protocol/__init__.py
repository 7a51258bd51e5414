"""The protocol core: pure functions and values every party computes the same way.

Canonical forms, digests, the RFC 9497 OPRF, Bloom filters, sealed match records, signed manifests,
RFC 9162 Merkle proofs, audit entries, the investigator's data model and the check itself as a
state machine. Nothing here does I/O: no gRPC, no database, no files, no terminal, no clock of the
process (time is an argument). ``tests/test_core_purity.py`` enforces it.
"""
