"""Ctrl-C and SIGTERM: stop within a second at any moment, leave nothing half-written, exit 130 or 143.

`handle_signals()` (the `cadyq` command installs it first thing) turns SIGINT and SIGTERM into `Interrupted`, a
KeyboardInterrupt raised in the main thread, and remembers the signal: a library that swallows the exception
(torch does, when it arrives while torch imports numpy) cannot hide it, because `check()`, called between units
of work, raises it again. Long native calls run off the main thread (`call`), so the main thread answers at
once whatever a convolution is doing; worker threads call `check()` between their steps and stop there.
"""
from __future__ import annotations

import contextlib
import queue
import signal
import threading

_stop = threading.Event()  # set by a signal, or by an interrupted `call`: every worker stops at its next check()
_signal: list[int] = []  # the signal received while handle_signals() is active
_POLL_S = 0.05


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal (SIGINT, SIGTERM) or by an interruption of the thread that waits on the work."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(e: KeyboardInterrupt) -> int:
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


def message(e: KeyboardInterrupt) -> str:
    """The one line the command prints."""
    return "cadyq: interrupted" if exit_code(e) == 128 + signal.SIGINT else f"cadyq: stopped by {e}"


def requested() -> bool:
    return _stop.is_set()


def stopped() -> Interrupted:
    """The interruption a requested stop stands for (the signal received, else SIGINT)."""
    return Interrupted(_signal[0] if _signal else signal.SIGINT)


def check() -> None:
    """Raise `Interrupted` if a stop was requested (workers call it between tiles and layers)."""
    if _stop.is_set():
        raise stopped()


def _handle(signum, frame):
    if not _signal:
        _signal.append(signum)
    _stop.set()
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals():
    """SIGINT and SIGTERM raise `Interrupted` in the main thread for the duration of the block (a no-op off the
    main thread). A process started with SIGINT ignored (a background job of a non-interactive shell) keeps
    ignoring it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _handle:
        yield  # off the main thread, or already answering (the command's entry point installed them first)
        return
    old = {}

    _stop.clear()
    _signal.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, _handle)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class _Worker:
    """One daemon thread that runs the calls of `call`, in order (a backend's state stays on one thread)."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        self.thread = threading.Thread(target=self._loop, name="cadyq-compute", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            fn, args, done = self.jobs.get()
            try:
                done.put((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                done.put((False, e))
            finally:
                self.idle.set()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def call(fn, *args):
    """fn(*args) on the compute thread while this thread waits, answering signals within `_POLL_S`. When the wait is
    interrupted, the stop is requested (the work ends at its next `check()`) and the interruption is raised."""
    global _worker
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)  # only the main thread answers signals; other threads (servers, clients) run as they are
    with _worker_lock:
        if _worker is None:
            _worker = _Worker()
        worker = _worker
    if threading.current_thread() is worker.thread:
        return fn(*args)
    while not worker.idle.wait(_POLL_S):  # an interrupted call is still finishing: it stops at its next check()
        _stop.set()
    if not _signal:
        _stop.clear()  # a stop requested by an interrupted call (not by a signal) ends with that call
    check()
    done: queue.SimpleQueue = queue.SimpleQueue()
    worker.idle.clear()
    worker.jobs.put((fn, args, done))
    try:
        while True:
            try:
                ok, value = done.get(timeout=_POLL_S)
                break
            except queue.Empty:
                check()
    except BaseException:
        _stop.set()
        raise
    if not ok:
        raise value
    return value
