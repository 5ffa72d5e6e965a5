"""fairaudit: audit transformer language models for social bias, axis by axis.

The Python API is what the `fairaudit` command calls:

    import fairaudit
    result = fairaudit.audit("run.yaml")          # or a RunConfig, or None for the default audit
    fairaudit.evaluate_models("m", "m-pruned", ["race"], ["bias_reprobe"], "store")
"""

__version__ = "0.1.0"
_API = {"audit": "fairaudit.runner", "evaluate_models": "fairaudit.runner", "prune_model": "fairaudit.runner",
        "RunConfig": "fairaudit.config", "load_config": "fairaudit.config", "load_model": "fairaudit.model",
        "load_suite": "fairaudit.suite", "resolve_suite": "fairaudit.suite"}


def __getattr__(name: str):
    """Import the API lazily, so that `import fairaudit` stays cheap (no torch import)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fairaudit' has no attribute {name!r}")
