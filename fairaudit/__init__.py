"""fairaudit: audit transformer language models for social bias, axis by axis.

The Python API is what the `fairaudit` command calls:

    import fairaudit
    result = fairaudit.audit("run.yaml")          # or a RunConfig, or None for the default audit
    fairaudit.evaluate_models("m", "m-pruned", ["race"], ["bias_reprobe"], "store")
    verdicts = fairaudit.evaluate_policy(fairaudit.load_policy("default"), Store("store"), run_id)
    fairaudit.run_sweep("sweep.yaml", backend="ray")
"""

__version__ = "0.2.0"
_API = {
    "audit": "fairaudit.pipeline.audit",
    "evaluate_models": "fairaudit.pipeline.evaluation",
    "prune_model": "fairaudit.pipeline.pruning",
    "PruningConfig": "fairaudit.config",
    "RunConfig": "fairaudit.config",
    "load_config": "fairaudit.config",
    "load_model": "fairaudit.inputs.model",
    "load_suite": "fairaudit.inputs.suite",
    "resolve_suite": "fairaudit.inputs.suite",
    "load_policy": "fairaudit.compliance.policy",
    "evaluate_policy": "fairaudit.compliance.policy",
    "run_sweep": "fairaudit.pipeline.sweep",
    "write_bundle": "fairaudit.reporting.bundle",
    "verify_bundle": "fairaudit.reporting.bundle",
    "Store": "fairaudit.store",
}


def __getattr__(name: str):
    """Import the API lazily, so that `import fairaudit` stays cheap (no torch import)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fairaudit' has no attribute {name!r}")
