"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a config value, a path, a checkpoint. The message names the problem in one line."""

    exit_code = 2

    def __str__(self):
        text = super().__str__()
        # one line only: a multi-line message would read like a traceback
        return " ".join(text.split())


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class TrainingFailed(Exception):
    """A run stopped for a reason recorded in its run record (e.g. a non-finite loss)."""

    exit_code = 1


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was written and the run should be requeued."""

    exit_code = 3
