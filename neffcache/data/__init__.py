"""Data files shipped with the package (the SDK release table)."""
