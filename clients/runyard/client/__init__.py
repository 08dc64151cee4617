"""Runyard."""
