"""`python -m fairaudit` is the `fairaudit` command."""

from fairaudit.cli import entry

entry()
