"""
systemd's notify protocol (``Type=notify``, ``WatchdogSec=``): tell the service manager when the
supervisor is ready, what it is doing, and that its main loop is still turning.

Why not ``python-systemd`` or ``sdnotify``: the protocol is one datagram of ``KEY=value`` lines
to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace),
see sd_notify(3). Standard library only, so nothing to install. Every send is non-blocking and
never raises: a full or missing socket costs a notification, never the supervisor.

``Notifier`` is driven by the supervisor's selector loop (``Supervisor._reconcile``), so a wedged
main loop stops ``WATCHDOG=1`` and systemd kills and restarts the service. Loop processes never
see ``$NOTIFY_SOCKET`` (``launch`` drops it from their environment).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

#: STATUS= is sent when it changes, at most this often (seconds).
STATUS_EVERY = 1.0


def notify(state: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False if unset or not delivered."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
        return True
    except (OSError, ValueError):
        return False


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (sd_watchdog_enabled(3)), None if off or not for us."""
    try:
        if (pid := env.get("WATCHDOG_PID")) and int(pid) != os.getpid():
            return None
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """READY=1 once, STATUS= when it changes, WATCHDOG=1 every half watchdog period, STOPPING=1."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.socket = env.get("NOTIFY_SOCKET", "")
        self.interval = watchdog_interval(env)
        self.ready = False
        self._status = ""
        self._status_at = -STATUS_EVERY
        self._ping_at = -1.0

    def _send(self, state: str) -> bool:
        return notify(state, {"NOTIFY_SOCKET": self.socket})

    def next_deadline(self, now: float) -> float:
        """When the selector must wake for the next watchdog ping (inf without a watchdog)."""
        return self._ping_at + self.interval if self.socket and self.interval else now + 3600

    def tick(self, now: float, health: Callable[[], tuple[bool, str]]) -> None:
        """One pass of the main loop: ping the watchdog; READY=1 (once ``health()`` says ready: claiming,
        every wanted loop up) and STATUS= from ``health()``."""
        if not self.socket:
            return
        if self.interval and now - self._ping_at >= self.interval:
            self._ping_at = now
            self._send("WATCHDOG=1")
        if now - self._status_at < STATUS_EVERY and self.ready:
            return
        up, status = health()
        if status != self._status and now - self._status_at >= STATUS_EVERY:
            self._status, self._status_at = status, now
            self._send(f"STATUS={status}")
        if up and not self.ready:
            self.ready = self._send("READY=1")

    def stopping(self, status: str) -> None:
        if self.socket:
            self._send(f"STOPPING=1\nSTATUS={status}")
