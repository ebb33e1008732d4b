"""
The supervisor's zygotes (``multitrigger.loop.zygote``), one owner: which interpreters get one,
adopting prestarted ones, starting, the first-start wait, replacing dead ones, closing them all.

Why: a loop forked from its interpreter's warm zygote starts in ~20 ms and shares the zygote's
imported Airflow; an exec'd one takes ~5 s and 120 MB. The supervisor asks this pool three things:
which zygote a loop forks from (``for_loop``), whether a loop's first start should still wait for
it (``waiting``), and when it next has something to do (``next_deadline``, for the selector's
timeout). ``tend`` acts on the clock; a zygote's own reports (ready, failed, exits) arrive through
the supervisor's selector, with which the pool registers every zygote it owns.

Rules:

* An interpreter gets a zygote iff a loop with ``start_method = "fork"`` runs it
  (``zygote_interpreters``); one zygote serves every fork loop of that interpreter.
* Adoption: ``supervisor.prestart`` may have started a staged zygote before the supervisor
  imported Airflow. If it is still alive and waiting for its environment it is adopted and sent the
  real loop environment (``Zygote.configure``); if ``prestart.configure_prestarted`` already sent it
  one, it is adopted only if that is exactly the environment the pool would send; otherwise it is
  closed and a fresh one started.
* First-start wait: a fork loop's first start waits while its zygote is still importing, at most
  ``startup_wait`` after ``start`` (N loops exec'd cold would cost N x 120 MB). Restarts never wait:
  a loop whose zygote is not ready is exec'd (``LoopProcess.spawn``).
* Replacement: a zygote that died after it was ready is replaced ``restart_delay`` later (its loops
  died with it and are exec'd meanwhile). One that never became ready — its imports failed, or it
  died importing — is not: the next would fail the same way, and exec'd loops report the error.

No waiting happens here: ``Zygote.start`` and ``configure`` return at once (``configure`` is one
send, bounded by ``FORK_TIMEOUT``).
"""

from __future__ import annotations

import hashlib
import math
import selectors
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from multitrigger.config import Config, LoopConfig
from multitrigger.supervisor.launch import loop_env
from multitrigger.supervisor.zygote_client import Zygote, ZygoteError

log = structlog.get_logger(__name__)

#: At start-up a loop waits this long (never blocking) for its interpreter's zygote, then is exec'd.
ZYGOTE_STARTUP_WAIT = 30.0
#: A zygote that died after it was ready is replaced after this delay (loops exec meanwhile).
ZYGOTE_RESTART_DELAY = 10.0


def zygote_interpreters(config: Config) -> list[Path]:
    """The interpreters that need a zygote: those of loops with ``start_method = "fork"``."""
    return sorted({Path(loop.python) for loop in config.loops.values() if loop.start_method == "fork"})


def zygote_home(state: Path, python: Path) -> Path:
    """The private ``AIRFLOW_HOME`` and working directory of ``python``'s zygote."""
    home = state / "zygotes" / hashlib.sha1(str(python).encode()).hexdigest()[:12]
    home.mkdir(parents=True, exist_ok=True)
    return home


class ZygotePool:
    """Every zygote of one supervisor, keyed by interpreter."""

    def __init__(self, config: Config, state_dir: Path, selector: selectors.BaseSelector, *,
                 clock: Callable[[], float] = time.monotonic, startup_wait: float = ZYGOTE_STARTUP_WAIT,
                 restart_delay: float = ZYGOTE_RESTART_DELAY,
                 env_for: Callable[[Path], dict[str, str]] = loop_env) -> None:
        self.interpreters = zygote_interpreters(config)
        self.state_dir = state_dir
        self.selector = selector
        self.clock = clock
        self.startup_wait = startup_wait
        self.restart_delay = restart_delay
        self.env_for = env_for  # zygote home → its loop environment (Airflow must be imported)
        self.zygotes: dict[Path, Zygote] = {}
        self._replace_at: dict[Path, float] = {}
        self._wait_until = -math.inf

    # -- what the supervisor asks --------------------------------------------------------------

    def for_loop(self, loop: LoopConfig) -> Zygote | None:
        """The zygote ``loop`` forks from (ready or not: ``LoopProcess.spawn`` checks); None = exec."""
        return self.zygotes.get(Path(loop.python)) if loop.start_method == "fork" else None

    def waiting(self, loop: LoopConfig, first_start: bool, now: float) -> bool:
        """Should ``loop``'s start wait for its zygote? Only its first, while the zygote imports."""
        zygote = self.for_loop(loop)
        return first_start and zygote is not None and zygote.starting and now < self._wait_until

    def next_deadline(self, now: float) -> float:
        """When ``tend`` or a waiting loop next needs the supervisor awake (``inf``: nothing due).

        A zygote's ready report wakes the selector by itself; the first-start wait's end does not.
        """
        deadlines = list(self._replace_at.values())
        if now < self._wait_until and any(z.starting for z in self.zygotes.values()):
            deadlines.append(self._wait_until)
        return min(deadlines, default=math.inf)

    # -- what the pool does ---------------------------------------------------------------------

    def start(self, prestarted: Mapping[Path, Zygote] | None = None) -> None:
        """Adopt or start one zygote per interpreter; loops' first starts may now wait for them."""
        unclaimed = dict(prestarted or {})
        for python in self.interpreters:
            self._start(python, unclaimed.pop(python, None))
        for zygote in unclaimed.values():  # prestarted for a config this supervisor does not run
            zygote.close()
        self._wait_until = self.clock() + self.startup_wait

    def tend(self, now: float) -> None:
        """Replace, after ``restart_delay``, each zygote that died after it was ready."""
        for python, zygote in list(self.zygotes.items()):
            if zygote.alive or zygote.ready_at is None:  # running, or never ready: nothing to do
                continue
            due = self._replace_at.get(python)
            if due is None:
                self._replace_at[python] = now + self.restart_delay
                log.warning("zygote died; replacing it after a delay", python=str(python), pid=zygote.pid,
                            delay_s=self.restart_delay)
            elif now >= due:
                del self._replace_at[python]
                zygote.close()
                self._start(python)

    def close(self) -> None:
        """Stop every zygote (and, through PDEATHSIG, any loop still forked from one)."""
        for zygote in self.zygotes.values():
            zygote.close()
        self._replace_at.clear()

    # -- internals ------------------------------------------------------------------------------

    def _start(self, python: Path, prestarted: Zygote | None = None) -> None:
        home = zygote_home(self.state_dir, python)
        zygote = self._adopt(prestarted, home) if prestarted is not None else None
        if zygote is None:
            try:
                zygote = Zygote.start(python, self.env_for(home), home)
            except OSError as err:
                self.zygotes.pop(python, None)
                log.error("cannot start a zygote; its loops will be exec'd", python=str(python), error=str(err))
                return
        zygote.register(self.selector)
        self.zygotes[python] = zygote

    def _adopt(self, prestarted: Zygote, home: Path) -> Zygote | None:
        """A prestarted zygote, configured with the loop environment; None if it is unusable."""
        try:
            if not prestarted.alive:
                raise ZygoteError("exited before it was adopted")
            env = self.env_for(home)
            if prestarted.awaiting_env:
                prestarted.configure(env)
            elif prestarted.configured_env is None:
                raise ZygoteError("not staged")
            elif prestarted.configured_env != env:  # Airflow was imported under another environment
                changed = sorted(set(env.items()) ^ set(prestarted.configured_env.items()))
                raise ZygoteError(f"configured early with another loop environment ({', '.join(k for k, _ in changed)})")
        except ZygoteError as err:
            log.warning("prestarted zygote unusable; starting another", python=str(prestarted.python),
                        pid=prestarted.pid, error=str(err))
            prestarted.close()
            return None
        log.info("prestarted zygote adopted", python=str(prestarted.python), pid=prestarted.pid)
        return prestarted
