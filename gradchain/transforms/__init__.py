"""Ingredients: small gradient transformations, one family per module."""
