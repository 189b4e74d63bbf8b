"""Profiles without Personas: last treatments, computed traits and audiences (SPEC section 4)."""
