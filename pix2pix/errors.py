"""The one type of error a user can fix: a job reports it as one line and exits 1.

Every project error derives from JobError; anything else is a bug and keeps its traceback
(pix2pix/cli.py). A leaf module, so the model core may raise it too.
"""


class JobError(Exception):
    """A mistake the user can fix: a flag, URI, dataset, model file, credentials or cluster."""


class ConfigError(JobError):
    """A configuration that cannot run: a recipe, budget, precision or tile range out of bounds."""
