"""Delivery of stored events and identities into FME itself (docs/delivery.md)."""
