"""One extension (cog) per feature."""
