"""Analysis of stored scores and of models: `overlap` (top neurons shared across axes and
models), `matching` (neurons of two models matched on a corpus), `comparison` (the `overlap`
command's work) and `diagnose` (where an axis' bias appears, grows and is carried). It may
import `measurement`, `inputs`, the store and the foundation modules.
"""
