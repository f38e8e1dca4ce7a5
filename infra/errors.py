"""Errors of the local stack and of configuration."""


class InfraError(Exception):
    """Root of every error raised by `infra`."""


class ConfigError(InfraError):
    """A configuration file or value is invalid."""


class StackError(InfraError):
    """The local stack (broker, Redis) could not be started, found or reached."""


class ServiceUnreachableError(StackError):
    """A service a command needs does not answer; the message names its address, where the
    address came from (a setting or the recorded stack) and what to do."""


class BrokerUnreachableError(ServiceUnreachableError):
    """The Kafka broker did not answer a metadata request in time."""


class RedisUnreachableError(ServiceUnreachableError):
    """Redis did not answer PING in time."""
