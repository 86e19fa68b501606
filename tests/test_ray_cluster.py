"""A real Ray cluster, started the way users start one: ``ray start --head`` and ``ray start
--address`` (two raylets on this machine), token authentication on, then ``solve``,
``validate`` and ``compare`` through ``--ray-address``: the figures are the in-process ones, the
tasks ran on both nodes, and a missing or wrong token is one line naming Ray's settings.

The cluster is this test's own: free ports, a temporary ``HOME`` and ``--temp-dir`` (no token
file or session of the user's is read or written), ``--node-ip-address=127.0.0.1`` (Ray itself
resolves the loopback name to this machine's address, ``services.resolve_ip_for_localhost``, so
the nodes register there; every port is a fresh ephemeral one and the GCS refuses any caller
without the token), ``--block`` so each ``ray start`` stays the parent of its node's processes,
each started in its own process group. At the end, even on failure, it is stopped by those
process groups and by the process ids whose command line names its temporary directory: never
``ray stop``, which would stop every Ray on the machine. Every wait is bounded.

Each command runs in a child process (``python -c``), as a user runs it: the environment
carries Ray's token settings, and the child prints ``placement.parallel.ray_task_nodes()`` (the
node of every Ray task it ran) on its last line of stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
"""How long the cluster may take to start with both nodes alive (a busy 2-core machine)."""
COMMAND_TIMEOUT_S = 240.0
"""How long one command may take on it."""


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_args() -> list[str]:
    """The options every raylet gets: one CPU, loopback, fresh ports, no usage stats."""
    return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--block",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def _kill_cluster(procs: list[subprocess.Popen[bytes]], tmp: str) -> None:
    """Stop the cluster's processes by their process groups (SIGTERM, then SIGKILL after a
    bounded wait), then any process whose command line names ``tmp`` (ours alone)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if tmp.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def two_raylets(env: dict[str, str], num_nodes: int = 2) -> Iterator[tuple[str, str]]:
    """Start a Ray cluster of ``num_nodes`` raylets on this machine, token authentication
    on (``env`` holds ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``); yield ``(address,
    temporary directory)`` once every node is alive; stop it at the end, even on failure."""
    tmp = tempfile.mkdtemp(prefix="plrc", dir="/tmp")  # short: Ray's socket paths are bounded
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        # 1. the head: GCS on `port`, no dashboard
        head = ["ray", "start", "--head", f"--port={port}", "--include-dashboard=false",
                f"--dashboard-port={free_port()}", f"--temp-dir={tmp}/ray", *_node_args()]
        procs.append(subprocess.Popen(head, env=env, stdout=open(f"{tmp}/head.log", "wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not start:\n" +
                                       Path(f"{tmp}/head.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        # 2. the other raylets join it
        for k in range(1, num_nodes):
            procs.append(subprocess.Popen(
                ["ray", "start", f"--address={address}", *_node_args()], env=env,
                stdout=open(f"{tmp}/node{k}.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        # 3. wait until every node is alive (a driver of our own, bounded in time)
        code = ("import sys, time, ray\n"
                "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
                "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]):\n"
                "    time.sleep(0.2)\n")
        left = max(1.0, deadline - time.monotonic())
        done = subprocess.run([sys.executable, "-c", code, address, str(num_nodes)], env=env,
                              capture_output=True, text=True, timeout=left)
        if done.returncode != 0 or any(p.poll() is not None for p in procs):
            raise RuntimeError("the Ray cluster did not come up:\n" + done.stderr[-3000:])
        yield address, tmp
    finally:
        _kill_cluster(procs, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


_DRIVER = """
import json, sys
from placement.cli import main
from placement.parallel import ray_task_nodes
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
print("TASK_NODES " + json.dumps(ray_task_nodes()), file=sys.stderr)
sys.exit(code)
"""


def in_process(args: list[Any]) -> tuple[int, str, str]:
    """Run ``placement ARGS`` in this process, no Ray: ``(exit status, stdout, stderr)``."""
    from click.testing import CliRunner

    from placement.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def placement_cmd(args: list[Any], env: dict[str, str]) -> tuple[int, str, str, dict[str, int]]:
    """Run ``placement ARGS`` in a child process: ``(exit status, stdout, stderr without the
    task-node line, {node id: Ray tasks})``."""
    done = subprocess.run([sys.executable, "-c", _DRIVER, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    lines = done.stderr.splitlines()
    nodes: dict[str, int] = {}
    if lines and lines[-1].startswith("TASK_NODES "):
        nodes = json.loads(lines.pop()[len("TASK_NODES "):])
    return done.returncode, done.stdout, "\n".join(lines), nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The two-raylet cluster with its token, and the environments of a user with the token
    and of one without it."""
    pytest.importorskip("ray")
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    home = tmp_path_factory.mktemp("home")
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    path = os.pathsep.join(dict.fromkeys([str(ROOT), *os.environ.get("PYTHONPATH", "")
                                          .split(os.pathsep)]))
    base.update(HOME=str(home), PYTHONPATH=path.rstrip(os.pathsep))
    with_token = dict(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    with two_raylets(with_token) as (address, _):
        yield {"address": address, "env": with_token, "no_token": base, "token": token}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-layer token-level trace (planning half in memory; held-out half sharded, 8 shards)."""
    from placement.routing_traces import write_native
    from placement.routing_traces.sharded import write_sharded
    from placement.routing_traces.synth import synthesize

    tmp = tmp_path_factory.mktemp("files")
    fit = synthesize("mixtral", num_tokens=2048, num_windows=2, num_source_ranks=4, num_layers=6,
                     seed=11)
    held = synthesize("mixtral", num_tokens=2048, num_windows=2, num_source_ranks=4,
                      num_layers=6, seed=12)
    write_native(fit, tmp / "fit.npz")
    write_sharded(held, tmp / "held", shard_tokens=256)
    return {"fit": tmp / "fit.npz", "held": tmp / "held", "tmp": tmp}


def _figures(text: str) -> dict[str, Any]:
    d = json.loads(text)
    return {k: v for k, v in d.items()
            if "time" not in k and k not in ("trace_name", "trace", "output")}


def test_solve_validate_compare_on_a_two_raylet_cluster(cluster: dict[str, Any],
                                                        files: dict[str, Path]) -> None:
    from placement.plan import Plan

    tmp, env, ray = files["tmp"], cluster["env"], ("--ray-address", cluster["address"])
    shape = ("--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3, "--objective", "balance")
    nodes: dict[str, int] = {}
    runs: dict[str, tuple[str, str, str]] = {}
    for name in ("local", "ray"):
        def cmd(args: list[Any], tasks: int | None, name: str = name) -> tuple[str, str]:
            """``(stdout, stderr)`` of a command that succeeds: in this process without Ray,
            else on the cluster with ``tasks`` Ray tasks (None: at least one per shard)."""
            if name == "local":
                code, out, err = in_process(args)
            else:
                code, out, err, used = placement_cmd([*args, *ray], env)
                assert sum(used.values()) == tasks if tasks else sum(used.values()) >= 8, used
                for node, n in used.items():
                    nodes[node] = nodes.get(node, 0) + n
            assert code == 0, err
            return out, err

        # 1. solve: a task per layer; 2. validate and compare the plan on the sharded held-out
        # trace: a task per shard
        solved, err = cmd(["solve", files["fit"], *shape, "--json", "-o", tmp / f"{name}.json"],
                          6)
        assert err == "", err
        validated, err = cmd(["validate", tmp / "local.json", files["held"], "--json",
                              "--device", "cpu"], 8)
        assert err == "", err
        compared, _ = cmd(["compare", tmp / "local.json", files["held"], "--baseline",
                           "contiguous", "-o", tmp / f"report-{name}"], None)
        runs[name] = (solved, validated, "\n".join(compared.splitlines()[:-1]))  # last: report
    # the same plan and the same figures as in one process
    np.testing.assert_array_equal(Plan.load(tmp / "ray.json").phy2log,
                                  Plan.load(tmp / "local.json").phy2log)
    assert _figures(runs["ray"][0]) == _figures(runs["local"][0])
    assert _figures(runs["ray"][1]) == _figures(runs["local"][1])
    assert runs["ray"][2] == runs["local"][2]
    # ... computed on both nodes of the cluster
    assert len(nodes) == 2 and all(len(n) == 56 for n in nodes), nodes


def test_a_missing_or_wrong_token_is_one_line(cluster: dict[str, Any], files: dict[str, Path]
                                              ) -> None:
    args = ["solve", files["fit"], "--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3, "-o",
            files["tmp"] / "refused.json", "--ray-address",
            cluster["address"]]
    a = placement_cmd(args, cluster["no_token"])
    b = placement_cmd(args, dict(cluster["env"], RAY_AUTH_TOKEN=secrets.token_hex(32)))
    c = placement_cmd(args, dict(cluster["no_token"], RAY_AUTH_MODE="token",
                                 RAY_AUTH_TOKEN_PATH=str(files["tmp"] / "no-such-token")))
    for code, out, err, _ in (a, b, c):
        assert code == 1 and out == "", err
        assert len(err.splitlines()) == 1, err  # no C++ log stream
        assert err.startswith(f"error: the Ray cluster at {cluster['address']} "), err
        assert "RAY_AUTH_MODE=token" in err and "RAY_AUTH_TOKEN" in err, err
        assert "`ray get-auth-token`" in err, err
    assert "needs Ray's authentication token" in a[2]
    assert "refused this process's token" in b[2]
    assert f"RAY_AUTH_TOKEN_PATH={files['tmp'] / 'no-such-token'} cannot be read" in c[2]
