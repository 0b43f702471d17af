"""Training: initial weights (base), freeze levels, the stage runner, checkpoints."""
