"""Side-by-side benchmarks of gradchain, optax and torch.optim: `python -m benchmarks.run`.

Not installed with the library: run the entry points from the repository root (see README.md).
"""
