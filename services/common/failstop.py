"""Fail-stop for the service processes that host a state machine (accounts, matching).

A writer that cannot write must not keep answering SERVING: when the host's writer fails
(StateMachineHost.on_failure), the process turns gRPC health NOT_SERVING, logs one line saying so, asks
its main to stop (the stop event), and exits non-zero (EXIT_WRITER_FAILED) so that its supervisor - the
launcher or the operator's process manager - restarts it; the restart re-verifies the journal and
replays it. If the orderly shutdown does not finish within `grace_s`, a watchdog thread ends the
process with the same code anyway.

    failstop = FailStop("accounts-0")
    async def run(stop):
        ...; await host.start(); failstop.arm(host, stop)
        server = await start_server(...); failstop.set_server(server)
        ...
    run_until_signal(run)
    failstop.exit_if_failed()
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_WRITER_FAILED = 70  # EX_SOFTWARE: the process stopped itself; a restart is the remedy


class _Serving(Protocol):
    async def set_serving(self, serving: bool) -> None: ...


class _Failing(Protocol):
    """What FailStop watches: a StateMachineHost's failure hooks."""

    on_failure: list[Callable[[BaseException], None]]


class FailStop:
    def __init__(self, name: str, *, exit_code: int = EXIT_WRITER_FAILED, grace_s: float = 10.0) -> None:
        self.name = name
        self.exit_code = exit_code
        self.grace_s = grace_s
        self.cause: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._server: _Serving | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: threading.Timer | None = None

    @property
    def failed(self) -> bool:
        return self.cause is not None

    def arm(self, host: _Failing, stop: asyncio.Event) -> None:
        """Watch `host` (a StateMachineHost); on its failure, set `stop`."""
        self._stop = stop
        host.on_failure.append(self.trigger)

    def set_server(self, server: _Serving) -> None:
        """The gRPC server whose health turns NOT_SERVING on failure (at once if it already failed)."""
        self._server = server
        if self.cause is not None:
            self._not_serving()

    def trigger(self, cause: BaseException) -> None:
        """The failure hook (runs on the event loop). Only the first call acts."""
        if self.cause is not None:
            return
        self.cause = cause
        log.critical(
            "%s: the journal writer failed (%s: %s); health is NOT_SERVING and the process exits with "
            "code %d so that its supervisor restarts it",
            self.name,
            type(cause).__name__,
            cause,
            self.exit_code,
            extra={"exit_code": self.exit_code},
        )
        self._not_serving()
        if self._stop is not None:
            self._stop.set()
        self._watchdog = threading.Timer(self.grace_s, self._hard_exit)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _not_serving(self) -> None:
        if self._server is None:
            return
        task = asyncio.get_running_loop().create_task(self._server.set_serving(False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hard_exit(self) -> None:
        log.critical(
            "%s: shutdown after the writer failure took more than %.1fs; exiting now",
            self.name,
            self.grace_s,
            extra={"exit_code": self.exit_code},
        )
        os._exit(self.exit_code)

    def exit_if_failed(self) -> None:
        """After the main loop returned: exit with exit_code if the writer failed."""
        if self.cause is not None:
            sys.exit(self.exit_code)  # the watchdog stays armed in case the interpreter's exit hangs
