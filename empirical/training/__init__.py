"""Training: the one trainer, its presets, checkpoints (written atomically, read without pickle), shipped weights
and their loading, and data parallelism under torchrun (DDP)."""
