"""``LoopProcess`` keeps what a loop writes bounded: real sockets, a real (idle) child process.

The "loop" end of each socketpair is driven by the test, byte for byte as a misbehaving loop
would write: requests it never reads the answers to, a log line it never finishes.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow.sdk.execution_time.comms import _RequestFrame
from multitrigger.supervisor.loop_process import OUTBOX_LIMIT, REQUEST_SEND_BUFFER, LoopCallbacks, LoopProcess
from multitrigger.supervisor.output import CutLine, OutputLimits

pytestmark = pytest.mark.timeout(60)


class Wired:
    """A ``LoopProcess`` around an idle child, with the loop's ends of its three sockets."""

    def __init__(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pairs = [socket.socketpair() for _ in range(3)]
        self.loop_req, self.loop_out, self.loop_logs = (b for _, b in pairs)
        self.proc = LoopProcess._wrap("noisy", self.child, *(a for a, _ in pairs))
        self.sel = selectors.DefaultSelector()
        self.frames: list[_RequestFrame] = []
        self.log_pieces: list[bytes | CutLine] = []
        self.proc.register(self.sel, LoopCallbacks(
            on_frame=self.frames.append, on_output=lambda pieces: None,
            on_log_lines=self.log_pieces.extend, on_broken=pytest.fail,
        ), OutputLimits(max_log_line_bytes=1024))

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            for key, mask in self.sel.select(0.01):
                proc, sock, reader = key.data
                if mask & selectors.EVENT_WRITE:
                    proc.flush(self.sel)
                if mask & selectors.EVENT_READ:
                    proc.service(self.sel, sock, reader)

    def close(self) -> None:
        self.proc.close(self.sel)
        self.child.kill()
        self.child.wait()


@pytest.fixture
def wired() -> Iterator[Wired]:
    w = Wired()
    yield w
    w.close()


def test_a_loop_that_never_reads_its_responses_stops_being_read(wired: Wired) -> None:
    wired.loop_req.setblocking(False)
    body = {"x": "y" * (1 << 20)}
    sent = 0
    for req_id in range(40):  # 40 requests, each answered with 1 MiB the loop never reads
        wired.loop_req.sendall(_RequestFrame(id=req_id, body={"type": "GetVariable", "key": "k"}).as_bytes())
        sent += 1
        wired.pump(3)
        for frame in wired.frames:
            wired.proc.respond(wired.sel, frame.id, body)
        wired.frames.clear()
    key = wired.sel.get_key(wired.proc.requests)
    assert not key.events & selectors.EVENT_READ and key.events & selectors.EVENT_WRITE
    # What is queued for it stays near the limit (plus what the kernel's buffers took), not 40 MiB.
    assert len(wired.proc._outbox) <= OUTBOX_LIMIT + (2 << 20)
    answered_before = len(wired.proc._outbox)
    # Once it reads, its requests are read again.
    wired.loop_req.setblocking(True)
    wired.loop_req.settimeout(5)
    drained = 0
    while drained < answered_before:
        drained += len(wired.loop_req.recv(1 << 20))
        wired.pump(1)
    wired.pump(5)
    assert wired.sel.get_key(wired.proc.requests).events & selectors.EVENT_READ


def test_an_unfinished_line_is_cut_as_it_arrives_and_delivered_at_eof(wired: Wired) -> None:
    writer = threading.Thread(target=wired.loop_logs.sendall,  # the loop blocks until it is read
                              args=(b'{"level":"info","event":"ok"}\n' + b"z" * 300_000,))  # no newline at the end
    writer.start()
    while writer.is_alive():
        wired.pump(1)
    wired.pump(5)
    assert wired.log_pieces == [b'{"level":"info","event":"ok"}\n']
    wired.loop_logs.close()  # the loop died mid-line
    wired.pump(5)
    (cut,) = wired.log_pieces[1:]
    assert isinstance(cut, CutLine) and cut.total == 300_000 and len(cut.head) == 1024


ONE_SEND = r"""
import socket, sys
sock = socket.socket(fileno=0)  # the request socket, as a loop's asyncio transport gets it
sock.setblocking(False)
try:
    sent = sock.send(b"x" * int(sys.argv[2]))
except BlockingIOError:
    sent = 0
open(sys.argv[1], "w").write(str(sent))
"""


def test_a_loops_push_of_a_megabyte_leaves_in_one_write(tmp_path) -> None:
    """The loop's end of the request socket holds ``REQUEST_SEND_BUFFER`` (the kernel allowing): a
    push of thousands of events is written at once, not one loop iteration per 208 KiB."""
    size = 1_000_000
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    if min(wmem_max, REQUEST_SEND_BUFFER) < size:  # Linux doubles what is set, for its bookkeeping
        pytest.skip(f"net.core.wmem_max is {wmem_max}: this kernel caps the buffer below a megabyte")
    out = tmp_path / "sent"
    proc = LoopProcess.spawn("roomy", [sys.executable, "-c", ONE_SEND, str(out), str(size)], {}, tmp_path)
    try:
        assert proc.handle.wait(30) == 0
        assert int(out.read_text()) == size  # nothing read by the supervisor's end yet
    finally:
        for sock in (proc.requests, proc.output, proc.logs):
            sock.close()
