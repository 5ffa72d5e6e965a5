"""Built-in fairaudit plugins."""
