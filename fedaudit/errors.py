"""Errors fedaudit raises on bad input. The CLI prints one line and exits with code 2."""


class FedAuditError(Exception):
    """Base class: the message names the input, what was wrong and what is allowed."""


class ConfigError(FedAuditError):
    """A scenario or suite file, or a command-line override, is invalid."""


class DataError(FedAuditError):
    """A dataset or data file is missing, malformed or inconsistent."""


class ModelError(FedAuditError):
    """An unknown model, or a model that does not fit the data or the request."""


class AttackError(FedAuditError):
    """An attack was asked for something the model or the data cannot give."""
