"""Errors a user can fix. Each message names the problem and the fix on one line.

The command line prints these as `minicpm: error: <message>` with a non-zero exit status and no
traceback; anything else that escapes is a bug and keeps its traceback.
"""


class MiniCPMError(Exception):
    """Base class: a problem with the user's input, files or machine, not a bug in the suite."""


class ModelNotFoundError(MiniCPMError):
    """The model reference names no file, folder or reachable hub repository."""


class ModelLoadError(MiniCPMError):
    """A config, weight or tokenizer file is missing, corrupt or not what it claims to be."""


class UnsupportedModelError(MiniCPMError):
    """A well-formed model that this runtime cannot honour (architecture, quant type, option)."""


class ContextLengthError(MiniCPMError):
    """A prompt does not fit in the context window."""


class BackendUnavailableError(MiniCPMError):
    """A requested backend or fast path cannot run on this machine or install."""
