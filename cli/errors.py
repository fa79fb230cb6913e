class CliError(Exception):
    """Printed as ``ERROR: message`` on stderr; the CLI exits non-zero."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
