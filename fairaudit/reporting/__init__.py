"""What a reviewer reads: `report` (the HTML audit report and its JSON twin), `bundle` (the
report, record, policy, suites and tables in one zip with a manifest of hashes, and its
verification) and `sanitize` (stored SVG rebuilt from an allow-list). It reads the store and
may import `compliance`, `analysis` and everything below them.
"""
