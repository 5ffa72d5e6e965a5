"""Repair: `prune` (selecting neurons by a stored score, removing or zeroing neurons and heads,
saving a model `transformers` loads) and `causal` (choosing neurons and heads by their
measured effect on the output, behind a quality guard). It may import `measurement`,
`inputs`, the store and the foundation modules; the pipeline decides when it runs.
"""
