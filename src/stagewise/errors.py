"""User-facing errors: one line that names the field, file or row, never a library traceback."""


class StagewiseError(Exception):
    """An error caused by the user's input (recipe, data, model path).

    The CLI prints ``str(err)`` on one line and exits with ``exit_status`` (2).
    """

    exit_status = 2


class RecipeError(StagewiseError):
    """The recipe is malformed: unknown key, wrong type, bad reference."""


class DataError(StagewiseError):
    """A dataset is missing, empty or has a malformed row."""


class ModelError(StagewiseError):
    """A model cannot be resolved or does not fit the requested use."""


class OutputError(StagewiseError):
    """The output folder cannot or must not be written: a file, read-only, foreign content, in use."""


class TrainingError(StagewiseError):
    """Training went wrong in a way the user can fix: a non-finite loss (diverged), for example."""


class DiskSpaceError(StagewiseError):
    """Too little free space for what is about to be written: free some and rerun (the run resumes)."""

    exit_status = 1
