"""Procedural image worlds: cheap, exactly-captioned training and test data."""
