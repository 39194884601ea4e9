"""The training loop, evaluation, metrics, and the device and precision they run on."""
