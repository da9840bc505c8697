"""lmlens-worker: long and bulk work on Dramatiq workers with a Redis broker."""

__version__ = "0.1.0"
