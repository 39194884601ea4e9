"""Every figure the README's benchmark section shows is read from a stored result in ``benchmarks/results/``.

Each ``###`` part of the section names the stored results it reports (``benchmarks/results/NAME.json``). A figure
is found when a value of those files, or a summary the benchmark scripts print from them, rounds to it at the
figure's own precision: a mean, a standard deviation or error, a 95% t-interval's half-width, a median, a minimum or
maximum over runs; a difference or ratio of two values or of two arms' means; per-run differences between
two arms; a number written inside a stored text (a trial's reason); a share as a percentage. Checked: every
number in a table's cells (past its first column, which names the row), and every number with a decimal point in
the prose (whole numbers in prose are mostly counts and settings: 1,001 texts, batch 16). What is not a
measurement is listed in NOT_MEASURED with the reason.

What it cannot see: where a result holds hundreds of values in one range (the small-data grid's accuracies and
trial scores), a three-decimal figure moved by a few thousandths is often still some stored value, so there it
catches a figure from another result or an old run only when that figure lies outside the stored values' range
or has four significant digits. It is exact for the smaller results.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?")
VERSION = re.compile(r"\d+\.\d+\.\d+")  # torch 2.13.0: a version, not a figure
RESULT = re.compile(r"benchmarks/results/[\w.\-]+\.json")
RULE = re.compile(r"^\|[-:| ]+\|$")  # a table's header rule
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
MAX_PAIRED = 12  # most values of one name in one record whose pairwise ratios and differences count

# (part title start, figure): facts about data or hardware, written in the README and in no result
NOT_MEASURED = {
    ("Tables:", "178"): "wine's rows: scikit-learn's bundled dataset",
    ("Tables:", "569"): "breast cancer's rows: scikit-learn's bundled dataset",
    ("Tables:", "1,797"): "digits' rows: scikit-learn's bundled dataset",
    ("Tables:", "442"): "diabetes' rows: scikit-learn's bundled dataset",
}


def benchmark_parts() -> list[tuple[str, str]]:
    """The README's benchmark section split at its ``###`` headings: (title, text) per part."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Benchmarks"):]
    section = section[:section.index("\n## ", 1)]
    parts = re.split(r"\n(?=### )", section)
    return [(part.splitlines()[0].lstrip("# "), part) for part in parts]


def table_figures(part: str) -> list[str]:
    """The numbers in a part's table cells, past the first column and the header rows."""
    lines = part.splitlines()
    figures = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or RULE.match(line) or (i + 1 < len(lines) and RULE.match(lines[i + 1])):
            continue
        figures += NUMBER.findall("|".join(line.split("|")[2:]))
    return figures


def prose_figures(part: str) -> list[str]:
    """The numbers with a decimal point in a part's prose: not in tables, code blocks or inline code."""
    prose = re.sub(r"```.*?```", "", part, flags=re.S)
    lines = [line for line in prose.splitlines()[1:] if not line.startswith(("|", "    "))]
    lines = [VERSION.sub("", re.sub(r"`[^`]*`", "", line)) for line in lines]
    return [n for line in lines for n in NUMBER.findall(line) if "." in n]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _summaries(values: list[float]) -> list[float]:
    out = [statistics.fmean(values), min(values), max(values), statistics.median(values)]
    if len(values) > 1:
        sd = statistics.stdev(values)
        error = sd / math.sqrt(len(values))
        out += [sd, statistics.pstdev(values), error, T_975.get(len(values) - 1, 1.96) * error]
    return out


def _parsed(value):
    """A stored value with its text read: a Python literal (some results store a dict as its repr), else the
    numbers written in it."""
    if isinstance(value, str):
        try:
            return _parsed(ast.literal_eval(value))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [float(n.replace(",", "")) for n in NUMBER.findall(value)]
    if isinstance(value, dict):
        return {k: _parsed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_parsed(v) for v in value]
    return value


def _keyed_leaves(value, key: str = "") -> list[tuple[str, float]]:
    """``value``'s numbers, each with the name it is stored under (a list's items take the list's name)."""
    if _is_number(value):
        return [(key, float(value))]
    if isinstance(value, dict):
        return [leaf for k, child in value.items() for leaf in _keyed_leaves(child, str(k))]
    if isinstance(value, list):
        return [leaf for child in value for leaf in _keyed_leaves(child, key)]
    return []


def derived_values(value, out: list[float]) -> None:
    """``value``'s numbers and the summaries a benchmark prints from them (see the module's docstring)."""
    if _is_number(value):
        out.append(float(value))
        return
    if isinstance(value, dict):
        for child in value.values():
            derived_values(child, out)
        by_key: dict[str, list[float]] = {}
        for key, number in _keyed_leaves(value):
            by_key.setdefault(key, []).append(number)
        for numbers in by_key.values():  # the same measure of two runs, arms or settings: their ratio, difference
            if 2 <= len(numbers) <= MAX_PAIRED:
                out += [a / b for a, b in itertools.permutations(numbers, 2) if b]
                out += [a - b for a, b in itertools.permutations(numbers, 2)]
        arms = {k: v for k, v in value.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
        for a, b in itertools.permutations(arms.values(), 2):
            for key in set(a[0]) & set(b[0]):
                if len(a) == len(b):  # the same seeds, in order: each run's difference
                    pairs = [(x[key], y[key]) for x, y in zip(a, b, strict=True)
                             if _is_number(x.get(key)) and _is_number(y.get(key))]
                    if pairs:
                        out += _summaries([x - y for x, y in pairs])
                means = [statistics.fmean([r[key] for r in arm if _is_number(r.get(key))] or [math.nan])
                         for arm in (a, b)]
                if all(math.isfinite(m) for m in means):
                    out += [means[0] - means[1]] + ([means[0] / means[1]] if means[1] else [])
    elif isinstance(value, list):
        for child in value:
            derived_values(child, out)
        if value and all(isinstance(r, dict) for r in value):
            for key in set().union(*value):
                numbers = [float(r[key]) for r in value if _is_number(r.get(key))]
                if numbers:
                    out += _summaries(numbers)
        elif value and all(_is_number(v) for v in value):
            out += _summaries([float(v) for v in value])


def stored_values(paths: list[str]) -> list[float]:
    values: list[float] = []
    for path in paths:
        derived_values(_parsed(json.loads((ROOT / path).read_text())), values)
    return values


def found(figure: str, values: list[float]) -> bool:
    """Whether a stored or derived value rounds to ``figure`` at its precision (either sign; or as a
    percentage where ``figure`` is one)."""
    text = figure.replace(",", "").replace("−", "-").lstrip("+")
    decimals = len(text.split(".")[1]) if "." in text else 0
    number = abs(float(text))
    return any(round(abs(v), decimals) == number or abs(v) <= 1 and round(abs(v) * 100, decimals) == number
               for v in values)


PARTS = [(title, part) for title, part in benchmark_parts() if table_figures(part) or prose_figures(part)]


@pytest.mark.parametrize("title, part", PARTS, ids=[title[:40] for title, _ in PARTS])
def test_every_benchmark_figure_in_the_readme_is_read_from_a_stored_result(title, part):
    paths = sorted(set(RESULT.findall(part)))
    assert paths, f"README part {title!r} shows figures but names no stored result (benchmarks/results/*.json)"
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert not missing, f"README part {title!r} names stored results that do not exist: {missing}"
    values = stored_values(paths)
    exempt = {figure for (start, figure) in NOT_MEASURED if title.startswith(start)}
    unfound = [f for f in table_figures(part) + prose_figures(part) if f not in exempt and not found(f, values)]
    assert not unfound, f"README part {title!r}: figures in no stored result ({', '.join(paths)}): {unfound}"


def test_a_figure_that_no_result_holds_is_caught():
    values = stored_values(["benchmarks/results/augmentation_text.json"])
    assert found("0.8786", values) and found("0.0120", values), "a mean and a standard deviation over seeds"
    assert not found("0.8787", values) and not found("0.9999", values)


def test_one_command_rewrites_every_stored_result_the_readme_names(monkeypatch):
    """``benchmarks/run_all.py`` reruns the README's own commands: between them they write every stored result
    the Benchmarks section reports, each exactly once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_all", run_all)  # its dataclass looks its module up
    spec.loader.exec_module(run_all)
    written = [command.result for command in run_all.readme_commands()]
    named = {path for _, part in benchmark_parts() for path in RESULT.findall(part)}
    assert sorted(set(written)) == sorted(written), "two commands write one result"
    assert named <= set(written), f"results no README command writes: {sorted(named - set(written))}"
    assert all((ROOT / command.script).is_file() for command in run_all.readme_commands())
