"""
``PR_SET_PDEATHSIG``: have the kernel signal a process when its parent dies, even on ``kill -9``.

Why one helper: three processes need it — an exec'd loop and an exec'd zygote towards the
supervisor (run as ``subprocess.Popen(preexec_fn=...)``, between fork and exec) and a forked loop
towards its zygote. Linux only (``prctl(2)``); stdlib only, so the zygote imports it before any
third-party module.

libc is loaded once, at import: a ``preexec_fn`` runs in the child of a process that may have
threads, where ``dlopen`` (what ``ctypes.CDLL`` does) could wait forever on a lock another thread
held at fork time. The child then only calls the already-resolved ``prctl``.

The signal is sent when the *thread* that forked the process exits, not the process: fork
children from the main thread (the supervisor and the zygote do).
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.restype = ctypes.c_int


def set_pdeathsig(signum: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent (thread) exits."""
    if _prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(signum)), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def die_with_parent() -> None:
    """``preexec_fn`` of a child the supervisor execs: SIGKILL when the supervisor dies."""
    set_pdeathsig(signal.SIGKILL)
