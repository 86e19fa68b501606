"""Every command the README and the docs pages show runs as written, in order, in an empty
directory, on shipped data or on files an earlier command made, so the examples cannot rot.

The ``console`` blocks (commands after ``$ ``, a trailing ``\\`` continues a command) and ``bash``
blocks (every line a command) of each page run in one bash, pages in :data:`PAGES` order, all in
one fresh directory (a later page may use what an earlier one made: the README's ``plan.json``,
``heldout.npz``, ...). A command passes when it exits 0, or, where the page shows ``error: ...``
as its output, when it fails with one ``error:`` line.

Marker comments on the line before a block (one line each):

* ``<!-- doc-test: skip: REASON -->``: the block does not run here (a GPU, a Ray cluster, data
  that is not shipped); :func:`test_excluded_blocks_say_why` checks every block runs or says why;
* ``<!-- doc-test: file NAME -->``: the block (a ``toml``, ``python``, ... block the page asks the
  reader to save) is written to ``NAME`` before the commands after it run.

Pages not in :data:`PAGES` are not run (:data:`NOT_RUN` says why).
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
PAGES = ["README.md", "docs/metrics.md", "docs/traces.md", "docs/clusters.md", "docs/engines.md",
         "docs/files.md", "docs/library.md"]
"""The pages whose blocks run, in this order, in one directory (``docs/engines.md`` uses the
README's ``plan.json`` and the ``like.npz`` of ``docs/metrics.md``, ``docs/files.md`` the files
all of them made)."""
NOT_RUN = {
    "docs/optimizer.md": "its examples plan the full bundled DeepSeek-V3 token trace and run the "
                         "frontier (minutes on 2 cores; item 4 of issue 19 makes them faster)",
}
"""Pages with command blocks that are not run, and why."""
SKIP = re.compile(r"<!--\s*doc-test:\s*skip:\s*(.+?)\s*-->")
FILE = re.compile(r"<!--\s*doc-test:\s*file\s+(\S+)\s*-->")
FENCE = re.compile(r"^( *)```(\w*)\s*$")


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
    file: tuple[str, str] | None = None
    """(name, content) of a block to save (``doc-test: file NAME``)."""


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
        indent, lang, start = len(m.group(1)), m.group(2), i
        j = i + 1
        while j < len(lines) and not lines[j].lstrip(" ").startswith("```"):
            j += 1
        body = [x[indent:] if x[:indent].strip() == "" else x for x in lines[start + 1:j]]
        i = j + 1
        prev = next((x for x in reversed(lines[:start]) if x.strip()), "")
        saved = FILE.search(prev)
        if saved:
            blocks.append(Block(page, start + 1, [], None, (saved.group(1), "\n".join(body) + "\n")))
            continue
        if lang not in ("console", "bash", "sh", "shell"):
            continue
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


def _commands(blocks: list[Block]) -> list[Command]:
    """The commands of the blocks that run, in order; a saved file is a command that writes it
    (from a copy next to the outputs, so that no quoting can change it)."""
    out: list[Command] = []
    for b in blocks:
        if b.file is not None:
            name, content = b.file
            out.append(Command(b.page, b.line, f"cat > {name} <<'DOC_TEST_EOF'\n{content}DOC_TEST_EOF"))
        elif not b.skip:
            out.extend(b.commands)
    return out


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
        o, e = out / f"{n}.out", out / f"{n}.err"
        res.append((int(rc), o.read_text() if o.exists() else "", e.read_text() if e.exists() else ""))
    return res


def test_parse_blocks() -> None:
    text = ("x\n```console\n$ A=1\n$ echo $A \\\n  two\n1 two\n$ false\nerror: no\n```\n"
            "<!-- doc-test: skip: needs a GPU -->\n```bash\n# c\npip install x\n```\n"
            "```python\nprint(1)\n```\n")
    a, b = parse_blocks("p.md", text)
    assert [c.text for c in a.commands] == ["A=1", "echo $A  two", "false"]
    assert a.commands[1].shown == ["1 two"] and a.commands[2].expects_error
    assert a.commands[1].line == 4 and a.skip is None
    assert [c.text for c in b.commands] == ["pip install x"] and b.skip == "needs a GPU"
    (f,) = parse_blocks("p.md", "<!-- doc-test: file a.toml -->\n```toml\nx = 1\n```\n")
    assert f.file == ("a.toml", "x = 1\n") and not f.commands
    (c,) = parse_blocks("p.md", "1. step\n\n   ```console\n   $ ls\n   a\n   ```\n")
    assert c.commands[0].text == "ls" and c.commands[0].shown == ["a"]


def test_saved_file_is_written_as_shown(tmp_path: Path) -> None:
    blocks = parse_blocks("p.md", "<!-- doc-test: file a.txt -->\n```\n$x 'y' \\\n```\n"
                                  "```console\n$ cat a.txt\n```\n")
    res = run_commands(_commands(blocks), tmp_path, tmp_path / "out")
    assert res[1] == (0, "$x 'y' \\\n", "")


def test_runner_keeps_variables_and_reports_each_status(tmp_path: Path) -> None:
    cmds = [Command("p", 1, "A=hello"), Command("p", 2, "echo $A"), Command("p", 3, "(exit 3)"),
            Command("p", 4, "echo after")]
    res = run_commands(cmds, tmp_path, tmp_path / "out")
    # a failure is reported and the next command still runs
    assert res[0][0] == 0 and res[1] == (0, "hello\n", "") and res[2][0] == 3
    assert res[3] == (0, "after\n", "")


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
    commands = _commands(_all_blocks(PAGES))
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
