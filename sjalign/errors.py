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


class OptionError(SjalignError):
    """A bad option value, its options named by field in ``{braces}`` so each front end names them its way.

    The library writes ``OptionError("{ks} 7: each k must be below n_test = 5")``; ``str()`` gives the
    field names ("ks 7: ..."), and the CLI renders the same error with its flags ("--k 7: ...",
    :meth:`render`). Only ``{word}`` placeholders are replaced; other text is left as written.

    Args:
        template: the message with ``{field}`` placeholders.
        **library: how the library names a placeholder when that is not the bare field
            (``resplit="use_file_split=False"``).
    """

    def __init__(self, template: str, **library: str) -> None:
        self.template, self.library = template, library
        super().__init__(self.render({}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each ``{field}`` replaced by ``names[field]``, else the library's name for it."""
        import re

        return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), self.library.get(m.group(1), m.group(1))),
                      self.template)
