"""One way out of a command on SIGINT or SIGTERM, and workers that never outlive their parent.

The command line installs :func:`handling_signals` around every command:

* the first SIGINT or SIGTERM raises :class:`Interrupted` (a :class:`KeyboardInterrupt`) in the
  main thread; whatever runs unwinds: a process pool cancels its outstanding work and
  terminates its workers (:mod:`placement.parallel`), an atomic write removes its temporary file
  (:mod:`placement._io`), and the command prints ``interrupted`` and exits with 128 + the signal
  (130 for SIGINT, 143 for SIGTERM);
* a second signal exits at once: the workers (every process below this one) are killed, the
  registered temporary files removed, ``interrupted`` printed (once) and the process ends with
  the same status; so does the first signal when its orderly way out takes more than
  :data:`GRACE_S` (a library that swallowed the exception, a worker that will not stop).

Worker processes run :func:`worker_init` first: they ignore SIGINT (a Ctrl-C on the terminal
reaches the whole process group; the parent alone decides), take SIGTERM's default action (the
parent terminates them without a traceback), and end themselves when the parent is gone, even
when it was SIGKILLed: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, and a thread that checks
the parent's pid twice a second everywhere.

A leaf module: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "Interrupted",
    "announce",
    "child_pids",
    "exit_now",
    "forget_cleanup",
    "handling_signals",
    "kill_descendants",
    "on_forced_exit",
    "reinstall",
    "resource_tracker_pid",
    "track_temp",
    "untrack_temp",
    "worker_init",
]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a command stops on."""

_WATCH_S = 0.5
"""How often a worker checks that its parent is still there (seconds)."""


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """``128 + signal``: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


_lock = threading.Lock()
_installed = False
_hits = 0
_announced = False
_CLEANUPS: dict[int, Callable[[], None]] = {}
_TEMPS: set[str] = set()


def announce(echo: Callable[[str], None] | None = None) -> None:
    """Print ``interrupted`` on standard error (with ``echo`` when given), once per command."""
    global _announced
    if not _announced:
        _announced = True
        with contextlib.suppress(OSError, ValueError):
            if echo is not None:
                echo("interrupted")
            else:
                os.write(2, b"interrupted\n")


def on_forced_exit(fn: Callable[[], None]) -> int:
    """Run ``fn`` (kill workers...) when a second signal ends the process at once; returns a
    key for :func:`forget_cleanup`."""
    key = id(fn)
    _CLEANUPS[key] = fn
    return key


def forget_cleanup(key: int) -> None:
    _CLEANUPS.pop(key, None)


def track_temp(path: str | os.PathLike[str]) -> None:
    """A temporary file or directory to remove if a second signal ends the process at once."""
    _TEMPS.add(os.fspath(path))


def untrack_temp(path: str | os.PathLike[str]) -> None:
    _TEMPS.discard(os.fspath(path))


def exit_now(code: int) -> None:
    """End the process with ``code`` after the ``atexit`` handlers (multiprocessing's
    finalizers, Ray's shutdown) and flushing stdout/stderr, skipping the interpreter's slow
    teardown of every loaded module (seconds with torch and OR-Tools loaded): how a command
    ends after a signal."""
    import atexit

    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _parents() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every process, from one pass over ``/proc`` (empty
    where there is none)."""
    out: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1:
                out.setdefault(int(fields[1]), []).append(int(name))
    return out


def child_pids(pid: int | None = None) -> list[int]:
    """The pids whose parent is ``pid`` (default: this process), from ``/proc`` (empty where
    there is none)."""
    return _parents().get(os.getpid() if pid is None else pid, [])


def descendant_pids(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this process), children first, from ``/proc``."""
    parents = _parents()
    out: list[int] = []
    todo = [os.getpid() if pid is None else pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_descendants() -> None:
    """SIGKILL every process below this one but multiprocessing's resource tracker (what a
    command left running when it is interrupted: workers, a local Ray's processes)."""
    tracker = resource_tracker_pid()
    for pid in descendant_pids():
        if pid != tracker:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def resource_tracker_pid() -> int | None:
    """The pid of multiprocessing's resource tracker, when this process started one (it must
    outlive the workers: it unlinks their semaphores)."""
    rt = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(rt, "_resource_tracker", None), "_pid", None)
    return pid if isinstance(pid, int) else None


def _force_exit(signum: int) -> None:
    for fn in list(_CLEANUPS.values()):
        with contextlib.suppress(Exception):
            fn()
    kill_descendants()  # a worker still starting (not yet registered), a local Ray included
    for p in list(_TEMPS):
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:  # unlink the pools' semaphores (no joins: exitpriority >= 0 only)
        with contextlib.suppress(Exception):
            mp_util._run_finalizers(0)
    announce()
    os._exit(128 + signum)


GRACE_S = 1.0
"""How long the first signal's orderly way out may take before the process exits as on a
second signal (a library that swallows the exception, a worker that will not stop)."""


def _handler(signum: int, frame: FrameType | None) -> None:
    global _hits
    _hits += 1
    if _hits == 1:
        raise Interrupted(signum)
    _force_exit(signum)


def _watch_signals(fd: int) -> None:
    """A thread that sees the signals as the C handler records them (through the wakeup fd),
    even while the main thread is stuck in native code that does not return to Python: the
    first one starts the grace timer, the second ends the process."""
    seen = 0
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        for signum in data:
            if signum not in SIGNALS:
                continue
            seen += 1
            if seen == 1:
                timer = threading.Timer(GRACE_S, _force_exit, (signum,))
                timer.daemon = True
                timer.start()
            else:
                _force_exit(signum)


def reinstall() -> None:
    """Put our handlers back (a library such as Ray may have replaced SIGTERM's), when
    :func:`handling_signals` is active."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM raises :class:`Interrupted`, a second one exits at once
    (see the module docstring). The previous handlers come back on the way out. A no-op outside
    the main thread."""
    global _installed, _hits, _announced
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _lock:
        old = {s: signal.getsignal(s) for s in SIGNALS}
        _installed, _hits, _announced = True, 0, False
    old_hook = sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        # a signal's exception raised where Python cannot raise it (a __del__, an at-fork hook;
        # ray.init's SIGTERM handler raises SystemExit): the grace timer ends the process
        if not isinstance(unraisable.exc_value, KeyboardInterrupt | SystemExit):
            old_hook(unraisable)

    sys.unraisablehook = quiet
    r, w = os.pipe()
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watch_signals, args=(r,), name="signal-watch", daemon=True).start()
    try:
        for s in SIGNALS:
            signal.signal(s, _handler)
        yield
    finally:
        if not _hits:  # after a signal, ours stay: a second one during the exit exits at once
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            sys.unraisablehook = old_hook
            signal.set_wakeup_fd(old_fd)
            os.close(w)  # the watcher reads EOF and ends
            _installed = False


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------
def _set_pdeathsig() -> None:
    """Linux: have the kernel SIGKILL this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_WATCH_S)
        if os.getppid() != parent:
            os._exit(1)


def worker_init(parent: int, then: Callable[..., Any] | None = None,
                args: tuple[Any, ...] = ()) -> None:
    """The first thing a worker process runs (a pool's ``initializer``): ignore SIGINT, die
    quietly on SIGTERM, end when ``parent`` (the pid of the process that made the pool) is gone;
    then ``then(*args)`` (the pool's own initializer, if any)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()
    if then is not None:
        then(*args)
