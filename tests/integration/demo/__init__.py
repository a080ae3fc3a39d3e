"""Integration tier for the shipped demo scenarios."""
