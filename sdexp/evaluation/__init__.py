"""Scoring checkpoints: the eval config, objectives, the generate-and-score path, `sdexp eval`."""
