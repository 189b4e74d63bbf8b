"""Profiles without Personas: last treatments, computed traits and audiences (docs/profiles.md)."""
