"""Griffe extension for the API reference: reads the package's docstrings as they are written.

- Their doctests sit under ``Example:``. Google style knows ``Examples:`` as the section whose ``>>>``
  lines render as code; Griffe reads the singular as a plain admonition, whose lines Markdown would
  render as a block quote. The heading is renamed when the pages are built.
- They cross-reference with Sphinx roles (``:func:`~tracin_lightning.functional.compute_influence```), which
  Markdown would print as they are. Each becomes inline code of the name (its last part with ``~``).

The sources are left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class ExampleSections(griffe.Extension):
    """Read ``Example:`` as Google style's ``Examples:``, and Sphinx roles as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, value)
