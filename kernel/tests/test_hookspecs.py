"""Every hookspec is documented and tested."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from lmlens import hookspecs

SPECS = [
    name for name, obj in vars(hookspecs).items()
    if inspect.isfunction(obj) and hasattr(obj, "lmlens_spec")
]


def test_there_are_hookspecs() -> None:
    assert {"register_methods", "load_model", "register_architectures"} <= set(SPECS)


def test_every_hookspec_has_a_docstring() -> None:
    for name in SPECS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, f"hookspec {name} has no real docstring"


def test_every_hookspec_has_a_test() -> None:
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    names = set(re.findall(r"def (test_\w+)", tests))
    for name in SPECS:
        assert any(t.startswith(f"test_{name}") for t in names), f"hookspec {name} has no test_{name}*"


def test_every_hookspec_is_in_the_architecture_doc() -> None:
    doc = Path(__file__).parents[2] / "docs" / "architecture.md"
    text = doc.read_text()
    for name in SPECS:
        assert f"`{name}(" in text, f"docs/architecture.md does not describe {name}"
