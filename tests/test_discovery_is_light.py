"""Finding plugins does not import what only drawing or serving needs."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from lmlens.plugins import PluginHost
host = PluginHost()
heavy = ["bokeh", "matplotlib", "starlette", "uvicorn", "dramatiq", "captum"]
print(json.dumps({"loaded": [m for m in heavy if m in sys.modules], "panels": sorted(host.panels)}))
"""


def test_plugin_discovery_leaves_heavy_libraries_unimported() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(out.stdout)
    assert {"attention", "importance"} <= set(found["panels"])
    assert found["loaded"] == []
