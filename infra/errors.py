"""Errors of the local stack and of configuration."""


class InfraError(Exception):
    """Root of every error raised by `infra`."""


class ConfigError(InfraError):
    """A configuration file or value is invalid."""


class StackError(InfraError):
    """The local stack (broker, Redis) could not be started, found or reached."""
