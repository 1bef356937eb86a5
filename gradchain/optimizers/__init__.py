"""Ready-made optimizers: recipes that chain public ingredients and hold no math of their own."""
