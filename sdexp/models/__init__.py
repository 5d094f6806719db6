"""Model families, loading of base models, the built-in tiny model, LoRA target selection."""
