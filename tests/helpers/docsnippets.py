"""Read the commands, snippets and quoted outputs out of README.md and docs/guide.md, run them, compare.

A document is a sequence of fenced blocks. A ```bash block holds commands (``\\`` continues a line, a
trailing ``# ...`` is a comment); a ```python block is one script; an unlabelled block right after a
command or script block in the same section is the output the document quotes for it. Quoted outputs
are compared line by line: every quoted line (whitespace collapsed) must be a line of what the block
printed, in the same order; lines the document leaves out may be skipped, a quoted ``...`` line too.
In a script, ``print(...)  # X`` quotes ``X`` as that print's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = {"README.md": REPO / "README.md", "docs/guide.md": REPO / "docs" / "guide.md"}

_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")


@dataclass
class Block:
    doc: str
    line: int              # 1-based line of the opening fence
    lang: str              # "bash" or "python"
    text: str
    section: str
    output: str | None = None    # the quoted output, if the document gives one
    commands: list[str] = field(default_factory=list)  # bash: one entry per (joined) command line


def parse(doc: str) -> list[Block]:
    """The ```bash / ```python blocks of ``doc`` (a key of :data:`DOCS`), each with its quoted output."""
    lines = DOCS[doc].read_text().splitlines()
    blocks: list[Block] = []
    section, last, i = "", None, 0
    while i < len(lines):
        heading = _HEADING.match(lines[i])
        fence = _FENCE.match(lines[i].strip())
        if heading and not fence:
            section, last = heading.group(1), None
        if fence:
            lang, start = fence.group(1), i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = "\n".join(line[len(lines[i]) - len(lines[i].lstrip()):] if line.strip() else ""
                             for line in lines[i + 1:j])  # drop the fence's indentation (list items)
            if lang in ("bash", "python"):
                last = Block(doc, start + 1, lang, body, section)
                if lang == "bash":
                    last.commands = split_commands(body)
                blocks.append(last)
            elif lang == "" and last is not None and last.output is None:
                last.output = body
            else:
                last = None
            i = j
        i += 1
    return blocks


def split_commands(text: str) -> list[str]:
    """Shell lines of a bash block: continuations joined, comments and blank lines dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            cur += line[:-1].strip() + " "
            continue
        cur += line.strip()
        if cur:
            out.append(re.sub(r"\s+", " ", cur))
        cur = ""
    return out


def inline_commands(doc: str) -> list[str]:
    """``spikeprune ...`` commands quoted inline in the prose (code spans, possibly wrapped)."""
    text = re.sub(r"```.*?```", "", DOCS[doc].read_text(), flags=re.S)
    spans = re.findall(r"`([^`]+)`", text)
    return [re.sub(r"\s+", " ", s).strip() for s in spans if re.match(r"spikeprune\s+[a-z]", s)]


def inline_files(doc: str) -> list[str]:
    """File and folder names quoted inline in the prose."""
    text = re.sub(r"```.*?```", "", DOCS[doc].read_text(), flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", text)
    return sorted({s for s in spans if " " not in s
                   and re.search(r"\.(safetensors|csv|json|png|nir|md|npy|bin|aedat4|tmp|lock)$|/$", s)})


def script_expectations(script: str) -> list[str]:
    """``print(...)  # X`` -> X, in order."""
    return [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s*#\s*(.+)$", script, flags=re.M)]


def normalise(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


# A number written with a decimal point or an exponent (an accuracy, a rate, an energy); integers (counts,
# parameters, bytes, bits) are compared exactly.
_MEASURE = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?(?![\w.])")
RESULT_TOLERANCE = 0.10


def same_line(quoted: str, printed: str, rel: float = 0.0) -> bool:
    """``printed`` says what ``quoted`` says: the same words and integers, and every decimal number within
    ``rel`` (relative) of the quoted one. ``rel`` = 0 asks for the same characters."""
    if rel == 0.0 or quoted == printed:
        return quoted == printed
    q_numbers, p_numbers = _MEASURE.findall(quoted), _MEASURE.findall(printed)
    if len(q_numbers) != len(p_numbers) or _MEASURE.sub("#", quoted) != _MEASURE.sub("#", printed):
        return False
    return all(abs(float(a) - float(b)) <= rel * max(abs(float(a)), abs(float(b)))
               for a, b in zip(q_numbers, p_numbers))


def compare(quoted: str, actual: str, volatile: tuple[str, ...] = (), rel: float = 0.0) -> list[str]:
    """Quoted lines missing from ``actual`` (in order). ``volatile``: regexes (timings) whose matches
    are replaced by ``<measured>`` on both sides before comparing. ``rel``: the relative tolerance on
    decimal numbers (:func:`same_line`)."""

    def clean(line: str) -> str:
        line = normalise(line)
        for pattern in volatile:
            line = re.sub(pattern, "<measured>", line)
        return line

    got = [clean(line) for line in actual.splitlines()]
    missing, pos = [], 0
    for q in quoted.splitlines():
        q = clean(q)
        if not q or q == "...":
            continue
        hit = next((i for i in range(pos, len(got)) if same_line(q, got[i], rel)), None)
        if hit is None:
            missing.append(q)
        else:
            pos = hit + 1
    return missing


def run_shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -eo pipefail\n" + command], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_script(script: str, cwd: Path, env: dict[str, str], name: str, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    path = cwd / f"_snippet_{name}.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def environment(home: Path, threads: int = 2) -> dict[str, str]:
    """The environment the documents' commands run in: this interpreter's ``spikeprune`` and ``python``
    first on PATH, a fresh HOME (``~/data`` and the dataset cache live there), the compiled LIF kernel's
    cache kept where it is, and the thread count the quoted outputs were recorded with."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    env["HOME"] = str(home)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SPIKEPRUNE_DEBUG", None)
    home.mkdir(parents=True, exist_ok=True)
    return env
