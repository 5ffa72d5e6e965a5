"""Compliance: `policy` (rules, verdicts with intervals, the release gate's exit status) and
`card` (the model card's "Bias, Risks, and Limitations" section). It reads the store; it may
import `measurement`, `inputs`, the store and the foundation modules.
"""
