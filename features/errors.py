"""Errors of the feature store layer."""


class FeaturesError(Exception):
    """Root of every error raised by `features`."""


class UnknownViewError(FeaturesError):
    """A feature view name that the repository does not define."""
