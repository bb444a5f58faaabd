"""Softmax regression on MNIST in NumPy, swept by Hydra and tracked by MLflow."""
