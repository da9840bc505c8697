"""An outside plugin, installed with pip, is found through entry-point discovery alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, lmlens_surprisal
from lmlens.plugins import PluginHost
host = PluginHost()
print(json.dumps({"file": lmlens_surprisal.__file__,
                  "plugins": {i.name: [i.dist, i.version, i.methods, i.error] for i in host.infos()}}))
"""


def test_pip_installed_template_is_discovered(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT / "examples" / "plugin_template")],
        check=True, capture_output=True, timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "LMLENS_LOAD_PLUGINS": "surprisal"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    found = json.loads(out.stdout)
    # the copy pip just installed is the one discovery found, not a development checkout
    assert Path(found["file"]).is_relative_to(target)
    assert found["plugins"]["surprisal"] == ["lmlens-surprisal", "0.1.0", ["surprisal"], None]
    assert "attention" not in found["plugins"]  # LMLENS_LOAD_PLUGINS kept the others out
