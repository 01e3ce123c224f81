"""Data sources: the systems that hold personal data, and their registry."""
