"""Measurement: running pairs through a model and turning what it computes into numbers.
`probe` (activation statistics, and which pairs are worth probing), `capture` (the hooks),
`scoring` (per-neuron, per-head and per-layer columns), `metrics` (every definition, once),
`attribution` (each unit's effect on the output-level bias) and `evaluate` (log-likelihoods,
paired before/after comparisons, and the evaluator contract). It may import `inputs` and the
foundation modules; never the store, the repair or the pipeline.
"""
