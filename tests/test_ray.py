"""The Ray backend: results in input order, user errors keep their type, bugs and lost workers
are one-line WorkerErrors, a missing Ray says how to install it, and the results are those of
the local backend. Every Ray test runs on the session's local Ray (fixture ``ray_local``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from placement.errors import InputError, TraceFormatError, WorkerError
from placement.parallel import Local, Processes, Ray, ordered_map, shutdown_ray

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _by_value(ray_local):
    """This module's work functions travel to the workers by value (the workers do not have
    the tests folder on their path)."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    if x == 3:
        raise InputError("Expected x != 3, got 3.")
    if x == 5:
        raise TraceFormatError("no topk_ids", path="t.npz")
    if x == 4:
        raise RuntimeError("boom")
    return x


def _die(x: int) -> int:
    if x == 1:
        os._exit(1)
    return x


@pytest.mark.parametrize("backend", [Ray(), Ray(workers=1), Ray(workers=2)],
                         ids=["all", "one", "two"])
def test_results_come_back_in_input_order(backend):
    seen: list[tuple[int, int]] = []
    items = list(range(9, -1, -1))
    out = ordered_map(_square, items, backend, lambda d, t: seen.append((d, t)))
    assert out == [x * x for x in items]
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    assert [d for d, _ in seen] == list(range(11))


def test_user_errors_keep_their_type():
    with pytest.raises(InputError, match=r"^Expected x != 3, got 3\.$"):
        ordered_map(_fail, [1, 3, 2], Ray(workers=2))
    with pytest.raises(TraceFormatError, match=r"^t\.npz: no topk_ids$"):
        ordered_map(_fail, [5], Ray())


def test_bugs_and_lost_workers_are_one_line_worker_errors():
    with pytest.raises(WorkerError, match="boom") as bug:
        ordered_map(_fail, [1, 4], Ray(workers=2))
    assert "\n" not in str(bug.value)
    with pytest.raises(WorkerError, match="a Ray task failed") as lost:
        ordered_map(_die, [0, 1, 2], Ray(workers=1))
    assert "\n" not in str(lost.value)
    assert ordered_map(_square, [2, 3], Ray()) == [4, 9]  # Ray carries on after a lost worker


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(InputError, match=r"install it with pip install 'placement\[ray\]'"):
        ordered_map(_square, [1], Ray())


def test_workers_must_be_positive():
    with pytest.raises(InputError, match=r"Expected workers >= 1, got 0\."):
        Ray(workers=0)
    assert Ray().name == "ray(local)" and Ray("auto", 2).name == "ray(auto, 2)"


def test_shutdown_leaves_a_ray_it_did_not_start(ray_local):
    shutdown_ray()
    assert ray_local.is_initialized()


def test_solve_gives_the_same_plan_on_every_backend():
    from placement.cluster import Cluster
    from placement.routing_traces.synth import synthesize
    from placement.solver import solve
    from placement.solver.problem import ProblemData, SolveOptions

    trace = synthesize("mixtral", num_tokens=1024, num_windows=2, num_source_ranks=4, num_layers=2,
                       seed=3)
    problem = ProblemData.from_traces(trace, Cluster(num_nodes=2, gpus_per_node=2,
                                                     slots_per_gpu=3))
    plans = [solve(problem, SolveOptions(backend=b, seed=1, objective="balance")).plan.phy2log
             for b in (Local(), Processes(2), Ray(workers=1), Ray(workers=2))]
    for p in plans[1:]:
        np.testing.assert_array_equal(p, plans[0])


def test_nothing_imports_ray_without_the_option(tmp_path):
    from placement.routing_traces import write_native
    from placement.routing_traces.synth import synthesize

    write_native(synthesize("mixtral", num_tokens=256, num_windows=2, num_layers=2, seed=1),
                 tmp_path / "t.npz")
    code = ("import sys\nfrom placement.cli import main\n"
            f"args = ['solve', {str(tmp_path / 't.npz')!r}, '--nodes', '1', '--gpus-per-node', "
            f"'2', '--slots-per-gpu', '5', '--objective', 'balance', '-o', "
            f"{str(tmp_path / 'p.json')!r}]\n"
            "try:\n    main(args)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_statistics_are_the_same_on_ray(tmp_path):
    from placement.routing_traces.sharded import open_sharded, write_sharded
    from placement.routing_traces.statistics import gather_statistics
    from placement.routing_traces.synth import synthesize

    t = synthesize("olmoe", num_tokens=2000, num_windows=2, num_source_ranks=4, num_layers=2,
                   seed=2)
    write_sharded(t, tmp_path / "sh", shard_tokens=300)
    ref = gather_statistics(t, Local(), sample_tokens=256)
    for st in (gather_statistics(t, Ray(workers=2), sample_tokens=256, chunk_tokens=500),
               gather_statistics(open_sharded(tmp_path / "sh"), Ray(), sample_tokens=256)):
        for f in ("window_counts", "window_tokens", "coactivation", "sample_index",
                  "sample_ids", "sample_source_rank"):
            np.testing.assert_array_equal(getattr(st, f), getattr(ref, f), err_msg=f)


def test_an_unreachable_cluster_is_one_line_at_once():
    from placement.parallel import _probe

    with pytest.raises(WorkerError, match=r"^could not reach the Ray cluster at 127\.0\.0\.1:1: "):
        _probe("127.0.0.1:1")
    with pytest.raises(WorkerError, match=r"at ray://127\.0\.0\.1:1: "):
        _probe("ray://127.0.0.1:1")
    _probe("auto")  # left to Ray


@pytest.fixture
def not_ray() -> Iterator[str]:
    """``127.0.0.1:PORT`` where a plain TCP server listens (accepts, reads, never answers)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for c in held:
            c.close()
        server.close()


def test_a_server_that_is_not_ray_is_one_line_after_the_timeout(not_ray: str):
    """Issue 22 item 5: the port is open, so the TCP check passes; the handshake (Ray's GCS
    client, in a child process) gets no answer and is stopped at the timeout."""
    from placement.parallel import check_ray_address

    with pytest.raises(WorkerError, match=rf"^no Ray cluster answered at {not_ray} within 3 s "
                                          r"\(something listens there, but not a Ray head's GCS "
                                          r"port: give the port of `ray start --head --port`\)$"):
        check_ray_address(not_ray, timeout=3)


def test_the_handshake_reads_a_refusal_of_the_token():
    from placement.parallel import _first_reason, _refused_credentials

    log = ("[2026-12-08 00:20:37,355 W 9042 9042] gcs_client.cc:210: Failed to get cluster ID "
           "from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token "
           "is missing or incorrect")
    assert _refused_credentials("AuthenticationError", "")
    assert _refused_credentials("", log)
    assert not _refused_credentials("RuntimeError", "Failed to connect")
    assert _first_reason("", log + "\n/lib/x.so(+0x1) [0x2] frame", -6).startswith(
        "Failed to get cluster ID from GCS server: Unauthenticated")
    assert _first_reason("", "", -9) == "the handshake exited with status -9"


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_the_handshake_dies_with_its_parent(not_ray: str):
    """Issue 22 item 5: SIGTERM to a command stuck on a server that is not Ray leaves no
    handshake process behind (it dies with its parent, long before its own timeout)."""
    import signal
    import time

    code = f"from placement.parallel import check_ray_address\ncheck_ray_address({not_ray!r}, 60)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        kids: list[int] = []
        for _ in range(300):  # until the handshake child runs (bounded: 30 s)
            kids = _children(parent.pid)
            if kids:
                break
            time.sleep(0.1)
        assert kids, "the handshake child never started"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=10) == -signal.SIGTERM
        for _ in range(100):  # bounded: 10 s, far below the handshake's 60 s
            if not any(_alive(k) for k in kids):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the handshake child {kids} outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
