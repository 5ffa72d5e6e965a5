"""fairaudit: audit transformer language models for social bias, axis by axis."""
__version__ = "0.1.0"
