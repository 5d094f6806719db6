"""sdexp: an experiment framework for fine-tuning Stable Diffusion."""

__version__ = "0.1.0"
