"""Datagrams a test listens for on a real socket: Airflow's statsd lines (UDP) and systemd's
sd_notify messages (``AF_UNIX``), each kept with the time it arrived, and waited for by pattern."""

from __future__ import annotations

import re
import socket
import threading
import time


class Datagrams:
    """A bound datagram socket and everything received on it (``messages``: (monotonic time, text)).

    ``lines``: a datagram holds several messages, one a line (statsd); else a datagram is one
    message (sd_notify's ``READY=1\\nSTATUS=...``)."""

    def __init__(self, sock: socket.socket, lines: bool = False) -> None:
        self.sock = sock
        self.lines = lines
        self.messages: list[tuple[float, str]] = []
        self._draining = False

    @classmethod
    def udp(cls, lines: bool = True) -> Datagrams:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return cls(sock, lines)

    @classmethod
    def unix(cls, address: str) -> Datagrams:
        """``address``: a path, or ``@name`` in the abstract namespace (as ``$NOTIFY_SOCKET`` says)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + address[1:] if address.startswith("@") else address)
        return cls(sock)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def receive(self, timeout: float) -> list[str]:
        """Every message that arrives within ``timeout`` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except (TimeoutError, BlockingIOError):
                break
            now = time.monotonic()
            for message in data.splitlines() if self.lines else [data]:
                self.messages.append((now, message))
                got.append(message)
        return got

    def drain(self) -> None:
        """Keep receiving on a thread until closed (the socket's buffer holds only seconds of statsd)."""
        self._draining = True

        def run() -> None:
            while True:
                try:
                    self.receive(0.2)
                except OSError:  # closed
                    return

        threading.Thread(target=run, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first message (already received or new) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, message in self.messages[seen:]:
                if re.search(pattern, message):
                    return message
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no message matching {pattern!r} within {timeout}s; got {[m for _, m in self.messages][-30:]}")
            if self._draining:
                time.sleep(0.1)
            else:
                self.receive(0.2)

    def close(self) -> None:
        self.sock.close()
