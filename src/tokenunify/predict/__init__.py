"""Affinity prediction with a trained network, in one process (tiles blended in memory)."""
