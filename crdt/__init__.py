"""Verifiable CRDT store: types, signed hash-linked changes, anti-entropy."""
