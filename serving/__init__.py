"""Serving: exposure filter queries, retrieval, ranking and the HTTP API."""
