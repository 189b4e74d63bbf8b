"""Inbound: Segment Webhooks destination → FME events and identities (docs/inbound.md)."""
