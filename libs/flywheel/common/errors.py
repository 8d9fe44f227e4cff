"""Domain errors. Services raise these; transports map them to status codes.

Kept free of gRPC and HTTP so the domain layer does not know how it is served.
"""


class FlywheelError(Exception):
    """Base class of errors a caller can act on; the message is shown to the caller."""


class InvalidArgument(FlywheelError):
    """The request is malformed: a name, value or payload breaks a rule."""


class NotFound(FlywheelError):
    """A named thing (model, version, alias, run...) does not exist."""


class AlreadyExists(FlywheelError):
    """Creating something that exists already."""


class FailedPrecondition(FlywheelError):
    """The request is valid but the system is not in a state to do it."""


class Unavailable(FlywheelError):
    """A dependency (broker, database, another service) cannot be reached; retry later."""


class PoisonEvent(FlywheelError):
    """An event that can never be handled (bad payload); it goes to the dead-letter topic."""
