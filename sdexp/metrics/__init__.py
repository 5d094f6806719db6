"""Scoring generated images: CLIP models behind one interface (more metrics build on it)."""
