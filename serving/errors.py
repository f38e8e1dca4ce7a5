"""Errors of the serving layer."""


class ServingError(Exception):
    """Root of every error raised by `serving`."""


class ExposureError(ServingError):
    """The exposure filter cannot be written or read; the message says what to do."""
