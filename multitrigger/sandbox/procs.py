"""Process trees from /proc (tests and benchmarks: whose children are these loops?)."""

from __future__ import annotations

import os
from pathlib import Path


def process_tree(root: int) -> set[int]:
    """``root`` and every live process below it."""
    children: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # comm may contain spaces and ')'
        children.setdefault(ppid, set()).add(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found
