"""Ranking and retrieval models, online and full training, embedding snapshots."""
