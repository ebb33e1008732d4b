"""
The zygote control protocol (``multitrigger.zygote_protocol``), pure: encode/decode round trips of
every message, who may send what, the size bound over a real SEQPACKET socketpair, malformed
records, and that each side's handler table covers every message it may receive.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from multitrigger import zygote_protocol as zp
from multitrigger.loop import zygote as zygote_side
from multitrigger.supervisor.zygote_client import Zygote as ClientZygote

SAMPLES: list[zp.Message] = [
    zp.Configure(env={"AIRFLOW_HOME": "/tmp/h", "PATH": "/usr/bin"}),
    zp.Fork(id=7, name="team_a", env={"A": "1"}, cwd="/srv/loops/team_a"),
    zp.Ready(pid=123, python="/opt/venvs/a/bin/python", modules=1650, warmup_s=3.25),
    zp.Ready(pid=123, python="/usr/bin/python3", modules=1650, warmup_s=4.0, prewarm_s=2.4, configured_after_s=3.1),
    zp.Failed(reason="ModuleNotFoundError: No module named 'airflow'"),
    zp.Forked(id=7, pid=4567),
    zp.ForkFailed(id=8, reason="fork: [Errno 12] Cannot allocate memory"),
    zp.Exited(pid=4567, returncode=-9),
    zp.Rejected(reason="unexpected message type 'ready'"),
]


def test_samples_cover_every_message() -> None:
    assert {type(m) for m in SAMPLES} == set(zp.MESSAGES.values()) == {*zp.TO_ZYGOTE, *zp.TO_SUPERVISOR}


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message: zp.Message) -> None:
    allowed = zp.TO_ZYGOTE if type(message) in zp.TO_ZYGOTE else zp.TO_SUPERVISOR
    data = zp.encode(message)
    assert zp.decode(data, allowed) == message
    assert data.startswith(b'{"type":"%s"' % message.TYPE.encode())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_a_message_from_the_other_side_is_refused(message: zp.Message) -> None:
    wrong = zp.TO_SUPERVISOR if type(message) in zp.TO_ZYGOTE else zp.TO_ZYGOTE
    with pytest.raises(zp.ProtocolError, match="unexpected message type"):
        zp.decode(zp.encode(message), wrong)


@pytest.mark.parametrize(("record", "problem"), [
    (b"\xff\xfe", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON list, not an object"),
    (b'{"id": 1}', "unexpected message type None"),
    (b'{"type": "spawn"}', "unexpected message type 'spawn'"),
    (b'{"type": "forked", "id": 1}', r"missing fields \['pid'\]"),
    (b'{"type": "forked", "id": 1, "pid": 2, "extra": 3}', r"unknown fields \['extra'\]"),
    (b'{"type": "forked", "id": "1", "pid": 2}', "forked.id: expected int, got str"),
    (b'{"type": "forked", "id": true, "pid": 2}', "forked.id: expected int, got bool"),
    (b'{"type": "exited", "pid": 2, "returncode": 1.5}', "exited.returncode: expected int, got float"),
    (b'{"type": "ready", "pid": 1, "python": "p", "modules": 3, "warmup_s": "3"}', "ready.warmup_s: expected float"),
    (b'{"type": "rejected", "reason": null}', "rejected.reason: expected str, got NoneType"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_records_are_protocol_errors(record: bytes, problem: str) -> None:
    with pytest.raises(zp.ProtocolError, match=problem):
        zp.decode(record, zp.TO_SUPERVISOR)


def test_fork_env_values_must_be_strings() -> None:
    with pytest.raises(zp.ProtocolError, match=r"fork.env: expected dict\[str, str\]"):
        zp.decode(b'{"type": "fork", "id": 1, "name": "a", "env": {"A": 1}, "cwd": "/"}', zp.TO_ZYGOTE)
    with pytest.raises(zp.ProtocolError, match="configure.env"):
        zp.Configure(env={"A": None})  # type: ignore[dict-item]  # checked on construction too


def _env_record(size: int) -> zp.Configure:
    """A configure message whose record is exactly ``size`` bytes."""
    overhead = len(zp.encode(zp.Configure(env={"X": ""})))
    return zp.Configure(env={"X": "y" * (size - overhead)})


def test_size_bound_over_a_real_socketpair() -> None:
    """A record of exactly MAX_RECORD bytes crosses a real control socketpair (the kernel's default
    SO_SNDBUF would refuse it with EMSGSIZE); one byte more is refused before sending."""
    ours, theirs = zp.socketpair()
    with ours, theirs:
        biggest = _env_record(zp.MAX_RECORD)
        assert len(zp.encode(biggest)) == zp.MAX_RECORD
        zp.send(ours, biggest)
        data = theirs.recv(zp.RECV_SIZE)
        assert len(data) == zp.MAX_RECORD and zp.decode(data, zp.TO_ZYGOTE) == biggest
        with pytest.raises(zp.ProtocolError, match="exceeds MAX_RECORD"):
            zp.send(ours, _env_record(zp.MAX_RECORD + 1))
    with pytest.raises(zp.ProtocolError, match="more than"):
        zp.decode(b" " * zp.RECV_SIZE, zp.TO_ZYGOTE)  # what a truncating receive would hand over


def test_fork_request_carries_its_fds() -> None:
    ours, theirs = zp.socketpair()
    r, w = os.pipe()
    try:
        request = zp.Fork(id=1, name="a", env={}, cwd="/")
        zp.send(ours, request, [r, w, r])
        data, fds, _flags, _addr = socket.recv_fds(theirs, zp.RECV_SIZE, zp.FORK_FDS)
        assert zp.decode(data, zp.TO_ZYGOTE) == request and len(fds) == zp.FORK_FDS
        os.write(fds[1], b"x")
        assert os.read(fds[0], 1) == b"x"  # the very pipe, passed by SCM_RIGHTS
        for fd in fds:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)
        ours.close()
        theirs.close()


def test_each_side_handles_every_message_it_may_receive() -> None:
    assert set(ClientZygote._HANDLERS) == set(zp.TO_SUPERVISOR)
    ctl, other = zp.socketpair()
    with ctl, other:
        assert set(zygote_side.Zygote(ctl).handlers) == set(zp.TO_ZYGOTE)


def test_protocol_is_stdlib_only() -> None:
    """The zygote imports it before any third-party module (see the module docstring)."""
    code = ("import sys; before = set(sys.modules); import multitrigger.zygote_protocol, multitrigger.pdeathsig; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "['multitrigger']", out.stdout + out.stderr
