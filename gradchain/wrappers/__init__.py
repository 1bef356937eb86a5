"""Wrappers: transformations that take another transformation (or the whole step) and change how it runs.

Parameter groups and freezing, gradient accumulation, surviving bad steps, averaging and lookahead,
loss-driven schedules and monitoring. Each is a `GradientTransformation`, so they nest and chain
with every ingredient and optimizer.
"""
