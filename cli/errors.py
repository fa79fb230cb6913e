class CliError(Exception):
    """Printed as ``ERROR: message`` on stderr; the CLI exits non-zero."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class RackUnavailable(CliError):
    """The rack did not answer for now (refused, reset, timed out, or a 502/503/504 while one of its services
    restarts): a read is worth another try."""
