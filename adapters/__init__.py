"""Adapter versions and tenant aliases' targets: registry, validation and live swap (issue 3)."""
