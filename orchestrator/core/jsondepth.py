"""A bound on JSON nesting, checked before any parser recurses into it.

``json.loads`` and pydantic recurse once per level: a body of a few hundred
thousand ``[`` raises RecursionError deep inside them. A cheap scan of the
brackets outside strings refuses such a document first, with a reason.
No event, command or policy needs more than a handful of levels.
"""

from __future__ import annotations

import re

MAX_DEPTH = 32
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_OPENING = frozenset(b"[{")


def depth_error(raw: str | bytes, limit: int = MAX_DEPTH) -> str | None:
    """Why ``raw`` nests too deep to parse, or None when it does not."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b"", data)):
        depth += 1 if match.group()[0] in _OPENING else -1
        if depth > limit:
            return f"JSON nested deeper than {limit} levels"
    return None
