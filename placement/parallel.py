"""Where independent pieces of work run: one ordered map over a backend.

Every parallel loop of ``placement`` (per-layer solves, per-shard statistics and replay) is
:func:`ordered_map` over a :class:`Backend`: the results come back in the order of the inputs,
whatever order the workers finish in, so the merged result is the same on every backend and with
any number of workers.

* :class:`Local` runs in this process, one piece after another;
* :class:`Processes` runs on a process pool of this machine (``jobs``);
* :class:`Ray` runs every piece as a Ray task: on a local Ray started on demand, or on an
  existing cluster (``address``). Ray is optional (``pip install 'placement[ray]'``) and
  imported only when a :class:`Ray` backend runs its first map.

A work function must be a module-level function whose argument and result pickle (small
descriptions of work, such as a shard's path and index, rather than the data).

A :class:`~placement.errors.PlacementError` raised by a piece comes back as itself (an
``InputError`` stays an ``InputError``); anything else that fails in a worker, or a lost worker,
is a :class:`~placement.errors.WorkerError` with one line.

Cancellation: when anything ends a map early (a piece's error, or the first SIGINT/SIGTERM, which
:mod:`placement._signals` turns into :class:`~placement._signals.Interrupted`), the outstanding
pieces are cancelled and the workers terminated before the exception goes on: no map waits for
pieces nobody will read, and no worker outlives its parent (see
:func:`placement._signals.worker_init`).

A leaf module: the standard library, :mod:`placement._util`, :mod:`placement._signals` and
:mod:`placement.errors` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from placement import _signals
from placement._util import Progress
from placement.errors import InputError, PlacementError, WorkerError

__all__ = [
    "RAY_CONNECT_TIMEOUT_S",
    "RAY_INSTALL_HINT",
    "Backend",
    "Local",
    "Processes",
    "Ray",
    "backend_for_jobs",
    "check_ray_address",
    "ordered_map",
    "process_pool",
    "ray_init_args",
    "ray_task_nodes",
    "shutdown_ray",
    "stop_pool",
]

RAY_INSTALL_HINT = "install it with pip install 'placement[ray]'"
"""How the one-line error for a missing Ray ends."""

T = TypeVar("T")
R = TypeVar("R")


class Backend:
    """Where :func:`ordered_map` runs its pieces (see the subclasses)."""

    #: short name for summaries (``"local"``, ``"processes(2)"``)
    name: str = "backend"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        raise NotImplementedError


@dataclass(frozen=True)
class Local(Backend):
    """Run every piece in this process, in order."""

    @property
    def name(self) -> str:  # type: ignore[override]
        return "local"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        out: list[R] = []
        for k, item in enumerate(items):
            out.append(fn(item))
            if progress is not None:
                progress(k + 1, len(items))
        return out


@dataclass(frozen=True)
class Processes(Backend):
    """Run the pieces on a pool of ``workers`` processes of this machine."""

    workers: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"Expected workers >= 1, got {self.workers}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"processes({self.workers})"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        total = len(items)
        out: list[R | None] = [None] * total
        done = 0
        with process_pool(min(self.workers, total)) as pool:
            index: dict[Future[R], int] = {pool.submit(fn, item): k for k, item in enumerate(items)}
            pending = set(index)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        out[index[f]] = f.result()
                    except PlacementError:
                        raise
                    except Exception as exc:  # a worker died: a bug, not the user's doing
                        raise WorkerError(f"a worker failed: {exc!r}") from exc
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return out  # type: ignore[return-value]


_STOP_S = 0.5
"""How long stopped workers get to end on SIGTERM before they are SIGKILLed (seconds)."""


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of ``pool`` now (the second signal's way out)."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            p.kill()


def stop_pool(pool: ProcessPoolExecutor, others: Sequence[int] = ()) -> None:
    """Cancel what ``pool`` has not started, terminate its workers (SIGTERM, then SIGKILL after
    :data:`_STOP_S`) and release it without waiting for running pieces. ``others``: pids of
    workers the pool was still starting (not yet in its table), SIGKILLed at once."""
    table = getattr(pool, "_processes", None) or {}  # the pool's own dict: it may still grow
    procs = list(table.values())
    known = {p.pid for p in procs}
    for pid in others:
        if pid not in known:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + _STOP_S
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
    late = [p for p in list(table.values()) if p.pid not in known]  # started meanwhile
    for p in late:
        with contextlib.suppress(Exception):
            p.kill()
    for p in procs + late:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.kill()
            p.join(1.0)
    # the pool's manager thread reaps the same workers: until it is done, a worker it reaped may
    # still look alive to this thread (waitpid answers the second caller ECHILD)
    if manager is not None:
        manager.join(1.0)


@contextlib.contextmanager
def process_pool(workers: int, *, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor]:
    """A :class:`ProcessPoolExecutor` of ``workers`` processes that stops at once when the
    block ends early: on any exception (an error of a piece, :class:`KeyboardInterrupt`,
    :class:`~placement._signals.Interrupted`) the outstanding pieces are cancelled and the
    workers terminated (:func:`stop_pool`) before the exception goes on; on success the pool
    is shut down normally. Its workers run :func:`placement._signals.worker_init` (then
    ``initializer(*initargs)``): they ignore SIGINT and end when this process is gone."""
    before = set(_signals.child_pids())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context,
                               initializer=_signals.worker_init,
                               initargs=(os.getpid(), initializer, initargs))
    key = _signals.on_forced_exit(lambda: _kill_workers(pool))
    try:
        yield pool
    except BaseException:
        # a signal may land while the pool starts a worker, before the worker is in its table
        # (spawn writes the worker's inputs to it first): those are the children made since
        tracker = _signals.resource_tracker_pid()
        stop_pool(pool, [p for p in _signals.child_pids() if p not in before and p != tracker])
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        _signals.forget_cleanup(key)


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
_RAY_STARTED_HERE = False
"""Whether :func:`_ray_module` started the running Ray (then :func:`shutdown_ray` stops it)."""

_REMOTE: Any = None
"""The ``ray.remote`` wrapper of :func:`_ray_call`, made once per process."""

_TASK_NODES: dict[str, int] = {}
"""Node id -> Ray tasks that ran there, over this process's Ray maps (:func:`ray_task_nodes`)."""

_ADDRESSES_OK: set[str] = set()
"""Cluster addresses whose handshake succeeded in this process (checked once)."""


def import_ray() -> Any:
    """``import ray``, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}.") from None
    return ray


def _package_root() -> str:
    """The folder holding the ``placement`` package (so local Ray workers import this copy)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ray_init_args(workers: int | None) -> dict[str, Any]:
    """The ``ray.init`` arguments of a local Ray of ``workers`` CPUs (default: all cores): no
    dashboard, worker logs kept off this terminal, and workers that import the same
    ``placement`` as this process (a checkout on ``PYTHONPATH`` included)."""
    path = [_package_root(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return dict(
        address="local",  # a new local Ray, even where `ray start` left one running
        num_cpus=workers or os.cpu_count() or 1,
        include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}},
    )


def _ray_module(address: str | None, workers: int | None) -> Any:
    """The ``ray`` module, connected: to ``address``, else to the Ray already running in this
    process, else to a local Ray started now with ``workers`` CPUs (default: all cores)."""
    global _RAY_STARTED_HERE
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address is not None:
        check_ray_address(address)
    try:
        if address is None:
            ray.init(**ray_init_args(workers))
            _RAY_STARTED_HERE = True
        else:
            # a cluster's workers import the placement installed on its nodes; its credentials
            # are Ray's own settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN, ...), read by ray.init
            args = ray_init_args(None)
            del args["num_cpus"], args["runtime_env"], args["address"]
            ray.init(address=address, **args)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkerError(f"could not start or reach {where}: {first}") from None
    return ray


def _probe(address: str) -> None:
    """Fail in one line, within seconds, when ``host:port`` (or ``ray://host:port``) does not
    answer (Ray itself retries for minutes); ``auto`` and addresses without a port are left to
    Ray."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise WorkerError(f"could not reach the Ray cluster at {address}: {reason}") from None


RAY_CONNECT_TIMEOUT_S = 10.0
"""How long :func:`check_ray_address` waits for a cluster's handshake (seconds)."""

_TOKEN_SOURCES = ("RAY_AUTH_TOKEN (or a file: RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); "
                  "`ray get-auth-token` on the head node prints it")
"""Where Ray reads the token from, for the one line of a refused credential."""

# The handshake, run in a child process: Ray's own GCS client, with the environment's Ray
# settings (the token among them), one round trip to the cluster's GCS. A child because Ray's
# client logs from C++ straight to stderr and retries for minutes against a server that is not
# Ray; the child's stderr is captured and the child is killed at the deadline (should this
# process die first, the child dies with it on Linux, else by SIGALRM shortly after the
# deadline).
_HANDSHAKE = r"""
import json, signal, sys
signal.alarm(int(float(sys.argv[2])) + 2)
try:  # Linux: die with the parent (PR_SET_PDEATHSIG), not only at the alarm
    import ctypes, os
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != int(sys.argv[3]):  # the parent died before prctl
        raise SystemExit(1)
except (ImportError, OSError, AttributeError):
    pass
try:
    from ray._raylet import GcsClient
except ImportError:
    print(json.dumps({"ok": True, "skipped": True}), flush=True)
    raise SystemExit(0)
try:
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled)
except ImportError:
    ensure_token_if_auth_enabled = None
try:
    if ensure_token_if_auth_enabled is not None:  # what ray.init checks before connecting
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    client = GcsClient(address=sys.argv[1])
    client.internal_kv_get(b"session_name", namespace=b"session", timeout=float(sys.argv[2]))
    print(json.dumps({"ok": True}), flush=True)
except Exception as exc:
    print(json.dumps({"ok": False, "type": type(exc).__name__, "message": str(exc)}), flush=True)
"""


def _refused_credentials(kind: str, text: str) -> bool:
    """Whether a handshake failed on the token (Ray's ``AuthenticationError`` or its gRPC
    status ``Unauthenticated`` / ``InvalidAuthToken`` in the C++ log)."""
    return kind == "AuthenticationError" or "Unauthenticated" in text or \
        "InvalidAuthToken" in text or "no authentication token was found" in text


def check_ray_address(address: str, timeout: float | None = None) -> None:
    """Check that a Ray cluster answers at ``address`` and accepts this process's credentials,
    within ``timeout`` seconds (default :data:`RAY_CONNECT_TIMEOUT_S`): a
    :class:`~placement.errors.WorkerError` of one line otherwise.

    1. ``host:port`` must accept a TCP connection (at once: a closed port is refused);
    2. Ray's own GCS client, in a child process with this process's environment (Ray's token
       settings: ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
       ``~/.ray/auth_token``), makes one round trip to the GCS: a server that is not Ray
       never answers it (the child is stopped at ``timeout``), a cluster that refuses the
       token says so at once. Nothing of Ray's C++ log reaches this terminal.

    ``ray://`` (Ray Client) addresses and ``auto`` get step 1 only (Ray checks the rest). An
    address that passed is not checked again in this process.
    """
    import json
    import subprocess

    if address in _ADDRESSES_OK:
        return
    timeout = RAY_CONNECT_TIMEOUT_S if timeout is None else timeout
    _probe(address)
    if "://" in address or address == "auto":
        return
    cmd = [sys.executable, "-c", _HANDSHAKE, address, str(timeout), str(os.getpid())]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"no Ray cluster answered at {address} within {timeout:g} s (something "
                          "listens there, but not a Ray head's GCS port: give the port of "
                          "`ray start --head --port`)") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if answer.get("ok"):
        _ADDRESSES_OK.add(address)
        return
    kind, message = str(answer.get("type", "")), str(answer.get("message", ""))
    if _refused_credentials(kind, message + done.stderr):
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            what = ("needs Ray's authentication token: set RAY_AUTH_MODE=token and the "
                    "cluster's token in")
        elif "no authentication token was found" in message:
            what = "needs a token, and RAY_AUTH_MODE=token found none: put the cluster's token in"
        elif "RAY_AUTH_TOKEN_PATH is set but" in message:
            path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
            what = (f"needs a token, and RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty "
                    "(RAY_AUTH_MODE=token): put the cluster's token in")
        else:
            what = "refused this process's token (RAY_AUTH_MODE=token): put the cluster's token in"
        raise WorkerError(f"the Ray cluster at {address} {what} {_TOKEN_SOURCES}.")
    raise WorkerError(f"could not reach the Ray cluster at {address}: "
                      f"{_first_reason(message, done.stderr, done.returncode)}")


def _first_reason(message: str, stderr: str, status: int) -> str:
    """One line for a failed handshake: the exception's first line, else the first line of
    Ray's log (``[date level pid] file.cc:line: what`` -> ``what``), else the exit status."""
    import re

    if message.strip():
        return message.strip().splitlines()[0]
    for line in stderr.splitlines():
        m = re.match(r"^\[[^]]*\] (?:\S+:\d+: *)?(.+)$", line.strip())
        if m:
            return m.group(1)[:300]
    return f"the handshake exited with status {status}"


def ray_task_nodes() -> dict[str, int]:
    """How many Ray tasks of this process's :class:`Ray` maps ran on each node: ``{node id
    (hex): tasks}`` (empty before any Ray map). Where the work went, for a check or a log."""
    return dict(_TASK_NODES)


def shutdown_ray() -> None:
    """Stop the local Ray this process started (a no-op when none, or when Ray was started or
    connected by someone else, e.g. a test fixture)."""
    global _RAY_STARTED_HERE, _REMOTE
    if not _RAY_STARTED_HERE or "ray" not in sys.modules:
        return
    import ray

    ray.shutdown()
    _RAY_STARTED_HERE = False
    _REMOTE = None


def _ray_call(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any, str]:
    """One Ray task: ``(True, fn(item), node id)``, or ``(False, error, node id)`` for a
    :class:`PlacementError` (it travels back as a value, so it is raised again with its own
    type and message)."""
    node = _node_id()
    try:
        return True, fn(item), node
    except PlacementError as exc:
        return False, exc, node


def _node_id() -> str:
    """The id of the Ray node this task runs on (``""`` outside a Ray worker)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):  # a RayTaskError: the exception of the task
        return repr(cause).splitlines()[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _cancel(ray: Any, refs: list[Any], *, force: bool = False) -> None:
    """Cancel the tasks still in flight (best effort: they may be finishing). ``force`` kills
    the workers that run them (an interrupted command); without it a running task gets
    KeyboardInterrupt and its worker stays, so a task of the next map cannot land on a worker
    that is being killed (it would fail with WorkerCrashedError)."""
    for ref in refs:
        try:
            ray.cancel(ref, force=force)
        except Exception:
            pass


@dataclass(frozen=True)
class Ray(Backend):
    """Run every piece as a Ray task, at most ``workers`` at a time.

    Args:
        address: an existing Ray cluster (``"ray://host:10001"``, ``"auto"``, ``"host:6379"``);
            None: the Ray this process already runs, else a local one started on demand with
            ``workers`` CPUs (no set-up; stopped by :func:`shutdown_ray` or at exit).
        workers: pieces in flight at once (and the CPUs of a local Ray); None: as many as the
            cluster schedules (a local Ray: the machine's cores).

    The machines of a cluster must have ``placement`` (the same version) installed; a local
    Ray's workers import the copy this process runs.
    """

    address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"Expected workers >= 1, got {self.workers}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        where = self.address or "local"
        return f"ray({where})" if self.workers is None else f"ray({where}, {self.workers})"

    def _connect(self) -> Any:
        """:func:`_ray_module`, interruptible: a signal while a local Ray starts stops what
        it started (ray.init's own SIGTERM handler, ``sys.exit(15)``, counts as SIGTERM)."""
        try:
            ray = _ray_module(self.address, self.workers)
        except SystemExit as exc:
            if exc.code != signal.SIGTERM:
                raise
            if self.address is None:
                _signals.kill_descendants()
            raise _signals.Interrupted(signal.SIGTERM) from None
        except KeyboardInterrupt:
            if self.address is None:
                _signals.kill_descendants()
            raise
        _signals.reinstall()  # ray.init replaces the SIGTERM handler with its own
        return ray

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        global _REMOTE
        ray = self._connect()
        if _REMOTE is None:
            _REMOTE = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        total = len(items)
        limit = total if self.workers is None else min(self.workers, total)
        out: list[Any] = [None] * total
        index: dict[Any, int] = {}
        pending: list[Any] = []
        nxt = done = 0
        try:
            # 1. keep at most `limit` tasks in flight; collect them as they finish
            while done < total:
                while nxt < total and len(pending) < limit:
                    ref = _REMOTE.remote(fn, items[nxt])
                    index[ref] = nxt
                    pending.append(ref)
                    nxt += 1
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    ok, value, node = ray.get(ref)
                    _TASK_NODES[node] = _TASK_NODES.get(node, 0) + 1
                    if not ok:
                        raise value
                    out[index.pop(ref)] = value
                    done += 1
                    if progress is not None:
                        progress(done, total)
        except PlacementError:
            _cancel(ray, pending)
            raise
        except Exception as exc:  # a task's bug, a lost worker, a Ray system error
            _cancel(ray, pending)
            raise WorkerError(f"a Ray task failed: {_one_line(exc)}") from None
        except BaseException:  # Ctrl-C, SIGTERM: cancel what runs, stop the Ray we started
            if _RAY_STARTED_HERE:  # at once: a graceful ray.shutdown() takes seconds
                _signals.kill_descendants()
            else:  # a cluster outlives this process: cancel its tasks of ours
                _cancel(ray, pending, force=True)
            raise
        return out


def backend_for_jobs(jobs: int, pieces: int) -> Backend:
    """:class:`Local` for one job (or one piece), else :class:`Processes` of at most ``jobs``,
    ``pieces`` and the machine's cores."""
    if jobs < 1:
        raise InputError(f"Expected jobs >= 1, got {jobs}.")
    n = max(1, min(jobs, pieces, os.cpu_count() or 1))
    return Local() if n == 1 else Processes(n)


def ordered_map(fn: Callable[[T], R], items: Sequence[T], backend: Backend | None = None,
                progress: Progress | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``backend`` (default :class:`Local`), results in input order.

    ``progress(done, total)`` is called with ``(0, total)`` first and as pieces finish.
    """
    items = list(items)
    if progress is not None:
        progress(0, len(items))
    if not items:
        return []
    return (backend or Local()).map(fn, items, progress)
