"""The gateway's worker processes (`[gateway] workers = N`, N > 1).

`python -m services.gateway` is worker 0: it creates the shared state (services.gateway.shared), binds
the HTTP port with SO_REUSEPORT, starts workers 1..N-1 (multiprocessing "spawn": fresh interpreters,
no gRPC state inherited), each binding the same port, and starts its admin gRPC and health only once
every worker reported ready, so SERVING means all N serve. The launcher (or a process manager)
supervises worker 0 alone:

- a worker that exits is started again by worker 0 after RESTART_DELAY_S (its connections are lost;
  the shared counters stay; its WebSocket connection counts are reset);
- a worker whose parent is gone (worker 0 killed) stops by itself (it watches the parent's sentinel);
- worker 0 stopping (SIGTERM / Ctrl-C) stops the workers first (SIGTERM, then SIGKILL after
  STOP_TIMEOUT_S).

When more than one pays (bench/gateway_bench.py --workers 1,2, measured on the 2-core machine that also
runs accounts, matching, history, market and wrk): a signed order costs the gateway ~100-120 us of CPU
with one worker and ~145-155 us with two (each worker's SubmitOrders batches are half as large, and
accounts pays per batch too), so where the whole exchange shares two cores one worker (the default)
accepts more orders per second; several workers pay where the gateway has cores the rest of the
exchange does not use. What does not depend on the count: a key, a limit, a replay, a listen key mean
the same with any number of workers (services.gateway.shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from typing import Any

from services.common.config import ExchangeConfig, load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.gateway.shared import SharedHandle, SharedState

log = logging.getLogger("services.gateway")

READY_TIMEOUT_S = 60.0
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 10.0
WATCH_S = 0.5


def install_uvloop() -> None:
    if os.environ.get("EXCHANGE_GATEWAY_UVLOOP", "1") == "1":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()


def worker_main(config_path: str, index: int, port: int, handle: SharedHandle, ready: Any) -> None:
    """A worker process (index >= 1): the gateway's HTTP and WebSocket on `port`, until SIGTERM or the
    end of its parent."""
    from services.gateway.app import GatewayApp

    setup_logging("gateway")
    config = load_config(config_path)
    configure(process_security(config, "gateway"))

    async def run(stop: asyncio.Event) -> None:
        parent = multiprocessing.parent_process()
        loop = asyncio.get_running_loop()
        if parent is not None:
            sentinel = parent.sentinel

            def parent_gone() -> None:
                loop.remove_reader(sentinel)
                log.warning("the first gateway worker is gone: stopping", extra={"worker": index})
                stop.set()

            loop.add_reader(sentinel, parent_gone)
        app = GatewayApp(config, worker=index, shared=SharedState.attach(handle), port=port)
        await app.start()
        ready.put(index)
        log.info("gateway worker ready", extra={"worker": index, "http_port": app.http_port})
        await stop.wait()
        await app.stop()

    install_uvloop()
    run_until_signal(run)


class Workers:
    """Worker 0's view of workers 1..N-1: start, wait until ready, restart, stop."""

    def __init__(self, config: ExchangeConfig, shared: SharedState, port: int) -> None:
        if shared.handle is None:
            raise ValueError("the workers need a shared state made by SharedState.create")
        self.config = config
        self.handle = shared.handle
        self.port = port
        self.ctx = multiprocessing.get_context("spawn")
        self.ready: Any = self.ctx.Queue()
        self.procs: dict[int, Any] = {}
        self.restarts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> None:
        proc = self.ctx.Process(
            target=worker_main,
            args=(str(self.config.path), index, self.port, self.handle, self.ready),
            name=f"gateway-worker-{index}",
            daemon=False,
        )
        proc.start()
        self.procs[index] = proc

    async def start(self) -> None:
        for index in range(1, self.config.gateway.workers):
            self._spawn(index)
        waiting = set(self.procs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while waiting:
            left = deadline - loop.time()
            if left <= 0:
                raise RuntimeError(f"gateway workers {sorted(waiting)} not ready after {READY_TIMEOUT_S}s")
            dead = [i for i in waiting if not self.procs[i].is_alive()]
            if dead:
                raise RuntimeError(f"gateway worker {dead[0]} exited with {self.procs[dead[0]].exitcode}")
            with contextlib.suppress(Exception):  # queue.Empty
                waiting.discard(await asyncio.to_thread(self.ready.get, True, min(left, 1.0)))
        self._watch = loop.create_task(self._supervise(), name="gateway-workers")

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCH_S)
            for index, proc in list(self.procs.items()):
                if self._stopping or proc.is_alive():
                    continue
                log.error(
                    "gateway worker exited; restarting it",
                    extra={"worker": index, "exit": proc.exitcode, "delay_s": RESTART_DELAY_S},
                )
                proc.join(0)
                await asyncio.sleep(RESTART_DELAY_S)
                if not self._stopping:
                    self.restarts += 1
                    self._spawn(index)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        for proc in self.procs.values():
            await asyncio.to_thread(proc.join, max(0.0, deadline - loop.time()))
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5.0)
        self.ready.close()

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs.values() if p.pid is not None]
