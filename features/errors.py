"""Errors of the feature store layer."""


class FeaturesError(Exception):
    """Root of every error raised by `features`."""


class UnknownViewError(FeaturesError):
    """A feature view name that the repository does not define."""


class ExposureError(FeaturesError):
    """The exposure filter cannot be written or read; the message says what to do."""


class SampleLogError(FeaturesError):
    """A part of the sample log cannot be read as samples."""


class ExperimentConfigError(FeaturesError):
    """The experiments configuration is invalid or names something it does not define; the
    message says what and where."""
