"""Domain errors. The CLI turns each into one red line and exit code 1."""


class SjalignError(Exception):
    """A user or input error: bad file, bad option, data that cannot be used.

    The message is one line that names the file (when there is one) and the problem.
    """


class FileFormatError(SjalignError):
    """A file is missing, not safetensors, or carries the wrong ``sjalign.format`` tag."""


class ShapeError(SjalignError):
    """Arrays whose shapes or dimensions do not fit together."""


class DataError(SjalignError):
    """A dataset, view or split that does not exist or cannot be read."""
