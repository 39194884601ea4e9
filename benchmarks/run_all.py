"""Rerun every benchmark whose figures the README shows, rewriting ``benchmarks/results/``.

The commands are the README's own: every indented ``HF_HUB_OFFLINE=1 ... benchmarks/NAME.py ... --json
benchmarks/results/FILE.json`` line of its Benchmarks section, run in order from the repository root with this
interpreter. Each writes to a temporary file first; its stored result is replaced only when the command
succeeds, so a failed or interrupted rerun leaves the old figures and their source in place. A command that
needs a GPU (``cuda_check.py``) is skipped where there is none, and one that needs what is not installed (SetFit
for ``small_data.py``: ``make peers``; Fashion-MNIST: ``make fashion-mnist``) fails with that tool's own message.

The whole set takes hours on 2 cores (the small-data grid alone about two): ``--only NAME`` reruns the commands
whose script or result file contains NAME, and ``--list`` shows them without running anything. After a rerun,
update the README's prose to the new figures; ``tests/test_readme_figures.py`` checks that every figure it shows
is in a stored result.

    make benchmarks                                     # all of them
    .venv/bin/python benchmarks/run_all.py --only small_data_tweets
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^ {4}HF_HUB_OFFLINE=1 (?:\S*python\S*) (benchmarks/\w+\.py.*)$")
NEEDS_GPU = ("benchmarks/cuda_check.py",)


@dataclass(frozen=True)
class Command:
    """One README command: the script, its arguments (with ``--json``), and the stored result it writes."""

    script: str
    arguments: tuple[str, ...]
    result: str

    def __str__(self) -> str:
        return shlex.join([self.script, *self.arguments])


def readme_commands(readme: Path = ROOT / "README.md") -> list[Command]:
    """The benchmark commands of the README's Benchmarks section, in order."""
    text = readme.read_text()
    section = text[text.index("## Benchmarks"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for line in section.splitlines():
        match = COMMAND.match(line)
        if not match:
            continue
        script, *arguments = shlex.split(match.group(1))
        if "--json" not in arguments:
            raise SystemExit(f"README command without --json, so its figures have no stored result: {line.strip()}")
        result = arguments[arguments.index("--json") + 1]
        commands.append(Command(script, tuple(arguments), result))
    return commands


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run(command: Command) -> tuple[bool, float]:
    """Run ``command`` writing to a temporary file, then replace its stored result (atomically) on success."""
    target = ROOT / command.result
    temporary = target.with_name(f".{target.name}.rerun")
    arguments = list(command.arguments)
    arguments[arguments.index("--json") + 1] = str(temporary)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, command.script, *arguments], cwd=ROOT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if completed.returncode != 0 or not temporary.is_file():
        temporary.unlink(missing_ok=True)
        return False, seconds
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, target)
    return True, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="rerun only the commands whose script or result file contains this")
    parser.add_argument("--list", action="store_true", help="list the commands and run nothing")
    args = parser.parse_args()
    commands = [c for c in readme_commands() if not args.only or args.only in c.script or args.only in c.result]
    if not commands:
        raise SystemExit(f"No README benchmark command matches {args.only!r}.")
    if args.list:
        for command in commands:
            print(f"{command}    -> {command.result}")
        return
    outcomes = []
    for i, command in enumerate(commands, 1):
        if command.script in NEEDS_GPU and not gpu_available():
            print(f"[{i}/{len(commands)}] skipped (needs a CUDA GPU): {command}", flush=True)
            outcomes.append((command, "skipped", 0.0))
            continue
        print(f"[{i}/{len(commands)}] {command}", flush=True)
        ok, seconds = run(command)
        outcomes.append((command, "rewritten" if ok else "FAILED (stored result kept)", seconds))
    print("\nresult file | outcome | minutes")
    for command, outcome, seconds in outcomes:
        print(f"{command.result} | {outcome} | {seconds / 60:.1f}")
    if any(outcome.startswith("FAILED") for _, outcome, _ in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
