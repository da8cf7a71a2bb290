"""The streaming engine: one loop for every model."""
