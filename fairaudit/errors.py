"""Errors a user can cause and fix.

Every class here carries a message that is shown to the user as is: it names the file,
the field and the fix. The CLI prints it without a traceback and exits with status 2.
Any other exception escaping fairaudit is a bug.
"""


class FairauditError(Exception):
    """Base of all user-facing errors."""


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
