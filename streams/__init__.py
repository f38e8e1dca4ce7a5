"""Bytewax dataflows over the `interactions` topic, the event contract and replays."""
