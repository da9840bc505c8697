"""lmlens-worker: long and bulk work on Dramatiq workers with a Redis broker."""

import importlib.metadata

__version__ = importlib.metadata.version("lmlens-worker")  # one source of truth: the package metadata
