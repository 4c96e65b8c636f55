"""Errors a user can cause. The CLI prints their message alone, without a traceback."""


class SearchR1Error(Exception):
    """Base class for errors with a message meant for the user."""


class ConfigError(SearchR1Error):
    """Unknown key, wrong type or invalid value in a config file or override."""


class CorpusFormatError(SearchR1Error):
    """A corpus line that is not a valid passage. The message names the file and line."""


class IndexFormatError(SearchR1Error):
    """An index directory that is missing, incomplete or built for something else."""


class RetrieverError(SearchR1Error):
    """A retrieval request that failed."""


class RetrieverUnavailableError(RetrieverError):
    """The retrieval server could not be reached (after retries)."""


class RetrieverRequestError(RetrieverError):
    """The retrieval server rejected a request (4xx): retrying will not help."""


class MissingDependencyError(SearchR1Error):
    """An optional dependency is needed for the requested feature."""


class CheckpointError(SearchR1Error):
    """A checkpoint that is incomplete, corrupted or does not fit the model it is loaded into."""


class TrainingDivergedError(SearchR1Error):
    """Training stopped: too many consecutive optimizer steps were skipped for non-finite values."""


class NonFiniteLogitsError(SearchR1Error):
    """A model produced NaN or infinite next-token logits, so no token can be sampled."""
