"""Engine errors. Algorithms turn them into QgsProcessingException with the same text."""


class MapSegError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class CanceledError(MapSegError):
    """The user canceled; nothing was written at the destination."""

    def __init__(self, message: str = "Canceled by the user; no output was written."):
        super().__init__(message)
