"""The pipeline: the audit stage by stage (`audit`), the pruning step (`pruning`), the
evaluation scheduler (`evaluation`), timings and results (`record`), and sweeps of audits
(`sweep`). It may import every package below it (inputs, measurement, store, analysis,
repair, compliance, reporting); nothing but the command line imports it.

`fairaudit.audit`, `fairaudit.evaluate_models` and `fairaudit.prune_model` are its public API.
"""
