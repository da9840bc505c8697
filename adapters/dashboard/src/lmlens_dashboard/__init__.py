"""lmlens-dashboard: a Bokeh server page over every installed method's panels.

``lmlens dashboard`` serves it; it analyses in process (an ``Analyzer``) or as a client of
the HTTP service (``--api URL``). Panels come only from plugins' ``register_panels``.
"""

from __future__ import annotations

__version__ = "0.1.0"
