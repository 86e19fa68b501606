"""Every command the README and the docs pages show runs as written, in order, in an empty
directory, on shipped data or on files an earlier command made, so the examples cannot rot.

The ``console`` blocks (commands after ``$ ``, a trailing ``\\`` continues a command) and ``bash``
blocks (every line a command) of each page run in one bash, pages in :data:`PAGES` order, all in
one fresh directory (a later page may use what an earlier one made: the README's ``plan.json``,
``heldout.npz``, ...). A command passes when it exits 0, or, where the page shows ``error: ...``
as its output, when it fails with one ``error:`` line.

A block that cannot run here is excluded with a marker comment on the line before it, with the
reason (``<!-- doc-test: skip: needs a GPU and a Hugging Face model -->``); the blocks excluded
that way are listed by :func:`test_excluded_blocks_say_why`. Pages not in :data:`PAGES` are not
run (:data:`NOT_RUN` says why).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md"]
"""The pages whose blocks run, in this order, in one directory."""
NOT_RUN = {
    "docs/optimizer.md": "its examples plan the full bundled DeepSeek-V3 trace (minutes on 2 cores)",
}
"""Pages with command blocks that are not run, and why."""
SKIP = re.compile(r"<!--\s*doc-test:\s*skip:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Command:
    page: str
    line: int
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def expects_error(self) -> bool:
        return bool(self.shown) and self.shown[0].startswith("error:")


@dataclass
class Block:
    page: str
    line: int
    commands: list[Command]
    skip: str | None


def parse_blocks(page: str, text: str) -> list[Block]:
    """The shell blocks of a markdown page (``console``, ``bash``, ``sh``, ``shell``)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = lines[start + 1:j]
        i = j + 1
        if lang not in ("console", "bash", "sh", "shell"):
            continue
        prev = next((x for x in reversed(lines[:start]) if x.strip()), "")
        skip = SKIP.search(prev)
        commands: list[Command] = []
        k = 0
        while k < len(body):
            raw = body[k]
            is_cmd = raw.startswith("$ ") if lang == "console" else \
                bool(raw.strip()) and not raw.lstrip().startswith("#")
            if not is_cmd:
                if commands and lang == "console":
                    commands[-1].shown.append(raw)
                k += 1
                continue
            cmd, first = (raw[2:] if lang == "console" else raw), k
            while cmd.rstrip().endswith("\\") and k + 1 < len(body):
                k += 1
                cmd = cmd.rstrip()[:-1] + " " + body[k].strip()
            commands.append(Command(page, start + 2 + first, cmd))
            k += 1
        blocks.append(Block(page, start + 1, commands, skip.group(1) if skip else None))
    return blocks


def _all_blocks(pages: list[str]) -> list[Block]:
    return [b for p in pages for b in parse_blocks(p, (REPO / p).read_text())]


def _script(commands: list[Command], out: Path) -> str:
    """One bash script: each command in braces (variables it sets stay), its stdout, stderr and
    exit status to ``out/N.{out,err,rc}``."""
    parts = []
    for n, c in enumerate(commands):
        parts.append(f"{{ {c.text}\n}} > {out}/{n}.out 2> {out}/{n}.err < /dev/null; "
                     f"echo $? > {out}/{n}.rc")
    return "\n".join(parts) + "\n"


def run_commands(commands: list[Command], work: Path, out: Path) -> list[tuple[int, str, str]]:
    """Run ``commands`` in order in ``work``; (exit status, stdout, stderr) of each."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "200", "NO_COLOR": "1"}
    subprocess.run(["bash", "-c", _script(commands, out)], cwd=work, env=env, check=False,
                   timeout=3000)
    res = []
    for n in range(len(commands)):
        rc = (out / f"{n}.rc").read_text().strip() if (out / f"{n}.rc").exists() else "-1"
        res.append((int(rc), (out / f"{n}.out").read_text(), (out / f"{n}.err").read_text()))
    return res


def test_parse_blocks() -> None:
    text = ("x\n```console\n$ A=1\n$ echo $A \\\n  two\n1 two\n$ false\nerror: no\n```\n"
            "<!-- doc-test: skip: needs a GPU -->\n```bash\n# c\npip install x\n```\n"
            "```python\nprint(1)\n```\n")
    a, b = parse_blocks("p.md", text)
    assert [c.text for c in a.commands] == ["A=1", "echo $A    two", "false"]
    assert a.commands[1].shown == ["1 two"] and a.commands[2].expects_error
    assert a.commands[1].line == 4 and a.skip is None
    assert [c.text for c in b.commands] == ["pip install x"] and b.skip == "needs a GPU"


def test_runner_keeps_variables_and_reports_each_status(tmp_path: Path) -> None:
    cmds = [Command("p", 1, "A=hello"), Command("p", 2, "echo $A"), Command("p", 3, "exit 3"),
            Command("p", 4, "echo after")]
    res = run_commands(cmds, tmp_path, tmp_path / "out")
    # ``exit`` in braces ends the script: what ran is reported, the rest did not run
    assert res[0][0] == 0 and res[1] == (0, "hello\n", "") and res[2][0] == 3
    assert res[3][0] == -1


def test_excluded_blocks_say_why() -> None:
    """Every page's shell blocks either run (README.md and PAGES) or carry a skip marker with a
    reason, or the page is in NOT_RUN; a marker without a reason is no marker."""
    pages = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
    unaccounted = []
    for block in _all_blocks(pages):
        if not block.commands or block.skip or block.page in PAGES or block.page in NOT_RUN:
            continue
        unaccounted.append(f"{block.page}:{block.line}")
    assert not unaccounted, f"blocks neither run nor marked: {unaccounted}"
    for page in NOT_RUN:
        assert (REPO / page).exists()


@pytest.mark.slow
def test_every_command_runs_as_written(tmp_path: Path) -> None:
    commands = [c for b in _all_blocks(PAGES) if not b.skip for c in b.commands]
    assert commands
    work = tmp_path / "work"
    work.mkdir()
    results = run_commands(commands, work, tmp_path / "out")
    failures = []
    for c, (rc, out, err) in zip(commands, results, strict=True):
        where = f"{c.page}:{c.line}: $ {c.text}"
        if c.expects_error:
            lines = err.splitlines()
            if rc in (0, -1) or len(lines) != 1 or not lines[0].startswith("error: "):
                failures.append(f"{where}\n  expected one 'error:' line, got rc {rc}: {err!r}")
        elif rc != 0:
            failures.append(f"{where}\n  exit {rc}\n  {(err or out)[-2000:]}")
    assert not failures, "\n".join(failures)
