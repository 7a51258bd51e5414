"""The Petanda node: the server each national CERT runs (servicers, store, ingest, publishing, sync)."""
