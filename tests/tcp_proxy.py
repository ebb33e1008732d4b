"""A real TCP proxy on loopback that a test can cut, black-hole and restore, to make a real DB outage.

``cut`` is a refused path (connections reset, new ones refused). ``blackhole`` is a partition that
refuses nothing: connections are accepted and kept, bytes are received but relayed nowhere, so a
client's query just never returns (what a path that silently drops packets looks like to an
application). ``heal`` relays everything again, including what was held back.
"""

from __future__ import annotations

import selectors
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; see the module docstring for the faults."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hold = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """The outage: close the listener and every forwarded connection."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        with self._lock:
            for sock in self._conns:
                sock.close()
            self._conns.clear()

    def blackhole(self) -> None:
        """The partition: accept and hold connections, relay nothing, refuse nothing."""
        self._hold.set()

    def heal(self) -> None:
        """End a black hole: relay again, what was held back first."""
        self._hold.clear()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        accept_only = selectors.DefaultSelector()
        assert self._listener is not None
        sel.register(self._listener, selectors.EVENT_READ, None)
        accept_only.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in (accept_only if self._hold.is_set() else sel).select(0.1):
                if key.data is None:
                    client, _addr = self._listener.accept()
                    try:
                        upstream = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        client.close()
                        continue
                    with self._lock:
                        self._conns |= {client, upstream}
                    sel.register(client, selectors.EVENT_READ, upstream)
                    sel.register(upstream, selectors.EVENT_READ, client)
                    continue
                src, dst = key.fileobj, key.data
                try:
                    data = src.recv(65536)  # type: ignore[union-attr]
                    if data:
                        dst.sendall(data)
                        continue
                except OSError:
                    pass
                for s in (src, dst):
                    try:
                        sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
                    s.close()
        sel.close()
        accept_only.close()
        self._listener.close()
