"""Shipped demo scenarios that drive a running loopgate stack through its public APIs only."""
