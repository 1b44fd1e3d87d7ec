"""Exact TracIn influence for PyKEEN knowledge-graph embedding models, on Lightning."""
