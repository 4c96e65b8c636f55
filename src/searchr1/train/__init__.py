"""RL trainer: the training loop, model wiring, checkpoints and metrics logging."""
