"""Where a supervisor's log says it routed each trigger: its ``triggers routed`` lines (one per claim
pass and group, with ``loop=`` and ``trigger_ids=[...]``), parsed from the console renderer's text."""

from __future__ import annotations

import re

_LINE = re.compile(r"triggers routed .*?\bloop=(\S+).*?\btrigger_ids=\[([^\]]*)\]")


def routed(text: str) -> dict[int, str]:
    """trigger id → the loop it was (last) routed to."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        if match := _LINE.search(line):
            for tid in match.group(2).split(","):
                if tid.strip():
                    found[int(tid)] = match.group(1)
    return found
