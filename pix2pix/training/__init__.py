"""The training pipeline: the training step, its schedule, the shards it reads, pairing and augmentation."""
