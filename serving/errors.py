"""Errors of the serving layer."""


class ServingError(Exception):
    """Root of every error raised by `serving`."""


class NotReadyError(ServingError):
    """No snapshot is loaded yet; the message says which model is missing and what to run."""


class RequestError(ServingError):
    """A request names something that cannot be served (the message says what)."""


class RetrievalIndexError(ServingError):
    """The retrieval index cannot be built or updated as asked (the message says why)."""


class DependencyError(ServingError):
    """A store the answer needs (Redis: exposure filters) cannot be read in time; the request
    is refused (503) rather than answered wrongly. The message names the store and the cause."""


class MergeModelError(ServingError):
    """A learnt merge's file (`channels.merge_model`) or its fitting samples are unusable."""
