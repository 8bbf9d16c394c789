"""Training, model-agnostic: the trainer, the epoch loop, checkpoints, workdirs, logs."""
