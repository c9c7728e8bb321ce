"""The error a ticket raises, in a module of its own so that every module about tickets can name it."""

__all__ = ["TicketError"]


class TicketError(ValueError):
    """A ticket that does not fit a model, or a file that is not a valid ticket."""
