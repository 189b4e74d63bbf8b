"""Delivery of stored events and identities into FME itself (SPEC 2.1)."""
