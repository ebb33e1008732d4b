"""
The zygote control protocol: every message the supervisor (``supervisor.zygote_client``) and a
zygote (``loop.zygote``) exchange, as typed messages. Both sides speak it only through this module.

Why stdlib only (frozen dataclasses and a decoder table, not pydantic): the zygote imports this
first, before any third-party module, so it can still report ``failed`` from an interpreter where
importing Airflow — or pydantic — fails (a broken bundle venv). It costs ~6 ms on top of the
stdlib modules the zygote imports anyway (``python -X importtime -c 'import
multitrigger.zygote_protocol'``); pydantic would add ~0.2 s of import and schema building. Every message is
still checked on construction and decoding: exact fields, each of its declared type.

Transport: the zygote's fd 0 (``CONTROL_FD``) is one end of an ``AF_UNIX``/``SOCK_SEQPACKET``
socketpair (``socketpair()``). One record is one message, one UTF-8 JSON object ``{"type": <tag>,
<fields>}`` of at most ``MAX_RECORD`` bytes (a fork request carries a whole environment).
SEQPACKET keeps record boundaries and delivers ``SCM_RIGHTS`` fds with the record they were sent
with: no length prefix, no reassembly. Receive with ``RECV_SIZE`` so an oversized record is seen
as one, not truncated. A record that does not decode to a message its receiver may get is a
``ProtocolError``.

The bound is what the kernel lets one SEQPACKET record be: a record must fit the sender's
``SO_SNDBUF`` (the default, 208 KiB, refuses larger ones with ``EMSGSIZE``). ``socketpair`` raises
it to ``MAX_RECORD``, which an unprivileged process gets on a default kernel (``wmem_max`` 208 KiB,
doubled by the kernel). An environment too big for one record is a ``ProtocolError`` on send: the
caller execs the loop instead (``exec`` allows ~2 MiB of environment).

Messages (``TO_ZYGOTE``, ``TO_SUPERVISOR`` say who may send what)::

    supervisor → zygote
      configure    env                      staged start only: the loop environment, once, first
      fork         id, name, env, cwd       + FORK_FDS fds: requests, output, logs
    zygote → supervisor
      ready        pid, python, modules, warmup_s[, prewarm_s, configured_after_s]
      failed       reason                   warm-up failed; the zygote then exits 1
      forked       id, pid                  reply to fork ``id``
      fork_failed  id, reason
      exited       pid, returncode          a forked loop ended; negative = killed by that signal
      rejected     reason                   a record the zygote could not decode or not now

Exec contract: the zygote is ``<python> -c <bootstrap_code("multitrigger.loop.zygote")>`` with the
control socket as fd 0; ``ENV_STAGED=1`` makes it wait for ``configure`` before importing Airflow
(``supervisor.prestart``), ``ENV_PRELOAD`` names extra modules to import before ``ready``. It exits
when the control socket closes; its children have ``PR_SET_PDEATHSIG=SIGKILL`` and die with it.
"""

import json
import socket
import types
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Union, get_args, get_origin

#: The control socket: the zygote's fd 0.
CONTROL_FD = 0
#: Largest record either side sends or accepts (see "The bound" above).
MAX_RECORD = 256 * 1024
#: Receive buffer: one byte more than any valid record, so an oversized one cannot pass as valid.
RECV_SIZE = MAX_RECORD + 1
#: Fds that come with a fork request: the loop's request socket, output socket, log socket.
FORK_FDS = 3
#: Env var with extra, comma-separated modules to import before ``ready`` (e.g. trigger modules).
ENV_PRELOAD = "MULTITRIGGER_ZYGOTE_PRELOAD"
#: Env var: "1" = staged start: prewarm, then wait for ``configure`` with the loop environment.
ENV_STAGED = "MULTITRIGGER_ZYGOTE_STAGED"


class ProtocolError(ValueError):
    """A record that is not a valid message for its receiver (or too big to send)."""


class _Message:
    """Base of every message: checks its fields against their declared types when built."""

    __slots__ = ()
    TYPE: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _conforms(value, f.type):
                raise ProtocolError(f"{self.TYPE}.{f.name}: expected {_name(f.type)}, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Configure(_Message):
    TYPE: ClassVar[str] = "configure"
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Fork(_Message):
    TYPE: ClassVar[str] = "fork"
    id: int
    name: str
    env: dict[str, str]
    cwd: str


@dataclass(frozen=True, slots=True)
class Ready(_Message):
    TYPE: ClassVar[str] = "ready"
    pid: int
    python: str
    modules: int
    warmup_s: float
    prewarm_s: float | None = None  # staged start only
    configured_after_s: float | None = None  # staged start only


@dataclass(frozen=True, slots=True)
class Failed(_Message):
    TYPE: ClassVar[str] = "failed"
    reason: str


@dataclass(frozen=True, slots=True)
class Forked(_Message):
    TYPE: ClassVar[str] = "forked"
    id: int
    pid: int


@dataclass(frozen=True, slots=True)
class ForkFailed(_Message):
    TYPE: ClassVar[str] = "fork_failed"
    id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Exited(_Message):
    TYPE: ClassVar[str] = "exited"
    pid: int
    returncode: int


@dataclass(frozen=True, slots=True)
class Rejected(_Message):
    TYPE: ClassVar[str] = "rejected"
    reason: str


ToZygote = Union[Configure, Fork]
ToSupervisor = Union[Ready, Failed, Forked, ForkFailed, Exited, Rejected]
Message = Union[ToZygote, ToSupervisor]
TO_ZYGOTE: tuple[type[_Message], ...] = get_args(ToZygote)
TO_SUPERVISOR: tuple[type[_Message], ...] = get_args(ToSupervisor)
#: The decoder table: ``type`` tag → message class.
MESSAGES: dict[str, type[_Message]] = {cls.TYPE: cls for cls in (*TO_ZYGOTE, *TO_SUPERVISOR)}


def encode(message: Message) -> bytes:
    """One record. Raises ``ProtocolError`` if it would exceed ``MAX_RECORD``."""
    record = {"type": message.TYPE, **{f.name: getattr(message, f.name) for f in fields(message)}}
    data = json.dumps(record, separators=(",", ":")).encode()
    if len(data) > MAX_RECORD:
        raise ProtocolError(f"{message.TYPE} record of {len(data)} bytes exceeds MAX_RECORD ({MAX_RECORD})")
    return data


def decode(data: bytes, allowed: Sequence[type[_Message]]) -> Any:
    """The message in one record, if it is one of ``allowed``; else ``ProtocolError``.

    Typed ``Any`` so callers can annotate the union they passed (``ToZygote``/``ToSupervisor``).
    """
    if len(data) > MAX_RECORD:
        raise ProtocolError(f"record of more than {MAX_RECORD} bytes")
    try:
        record = json.loads(data)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError(f"record is not JSON: {err}") from None
    if not isinstance(record, dict):
        raise ProtocolError(f"record is a JSON {type(record).__name__}, not an object")
    tag = record.pop("type", None)
    cls = MESSAGES.get(tag) if isinstance(tag, str) else None
    if cls is None or cls not in allowed:
        raise ProtocolError(f"unexpected message type {tag!r} (expected one of {sorted(c.TYPE for c in allowed)})")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    missing = sorted(n for n, f in known.items() if n not in record and f.default is MISSING)
    unknown = sorted(set(record) - set(known))
    if missing or unknown:
        raise ProtocolError(f"{tag}: missing fields {missing}, unknown fields {unknown}")
    return cls(**record)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A control socketpair whose records may be ``MAX_RECORD`` bytes (``SO_SNDBUF`` raised)."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in pair:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_RECORD)
    return pair


def send(sock: socket.socket, message: Message, fds: Sequence[int] = ()) -> None:
    """Send one record (with ``fds`` attached, if any). A non-blocking socket may raise
    ``BlockingIOError``: nothing was sent, try again."""
    data = encode(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def _conforms(value: Any, annotation: Any) -> bool:
    """Is ``value`` (as JSON decodes it) of ``annotation``? The few types messages use."""
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):  # JSON has one number type; bool is not a number here
        return isinstance(value, (int, float) if annotation is float else int) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    if isinstance(annotation, types.UnionType):
        return any(_conforms(value, arg) for arg in annotation.__args__)
    if get_origin(annotation) is dict:
        key_type, value_type = get_args(annotation)
        return isinstance(value, dict) and all(
            _conforms(k, key_type) and _conforms(v, value_type) for k, v in value.items())
    raise TypeError(f"zygote_protocol cannot check {annotation!r}")


def _name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)
