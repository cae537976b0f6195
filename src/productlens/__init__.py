"""productlens: identify products in photos for e-commerce catalogs."""

__version__ = "0.1.0"
