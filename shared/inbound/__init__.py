"""Inbound: Segment Webhooks destination → FME events and identities (SPEC section 2)."""
