"""Errors a user can cause and fix.

Every class here carries a message that is shown to the user as is: it names the file,
the field and the fix. The CLI prints it without a traceback and exits with status 2.
Any other exception escaping fairaudit is a bug.
"""


def one_paragraph(text: str) -> str:
    """`text` with control characters (newlines, tabs, NUL...) written as escapes, so that a
    message quoting hostile input stays one printable paragraph."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


class FairauditError(Exception):
    """Base of all user-facing errors."""

    def __init__(self, message: str = ""):
        super().__init__(one_paragraph(message))


class SuiteError(FairauditError):
    """A suite file is malformed or inconsistent."""


class ConfigError(FairauditError):
    """A run config is malformed or names something that does not exist."""


class PluginError(FairauditError):
    """A plugin is unknown, failed to load, or misbehaved."""


class ModelError(FairauditError):
    """A model could not be found, loaded or handled."""


class StoreError(FairauditError):
    """Results could not be written to or read from an output folder."""


class NothingToPrune(ConfigError):
    """Causal selection found no axis, or no budget, to prune for; `record` holds its plan
    (gates, guard, budgets). `prune --causal` stops with it; an audit goes on without pruning."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record
