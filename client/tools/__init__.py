"""The people's tools: the ``petanda`` CLI (check, sighting, audit, demo), the batch reader, the
connection settings, rendering and the audit report. Imports protocol and transport; the node never
imports tools.
"""
