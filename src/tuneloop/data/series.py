"""Time series: reading and checking a file of series, and the forecast windows cut from them.

A file holds one time column and either one or more value columns (each a series, named by its column) or,
in long format, a series id column and one value column (each id a series). The time column holds dates
(ISO 8601), date-times, or integers (years, step numbers). Every series must step by one frequency, inferred
from its times: a fixed step (days, hours, seconds, or integer steps) or calendar months (monthly, quarterly,
yearly data, whose days apart differ). A time out of order, a repeated time, a gap or a missing value is an
error naming the file, the line and the column, before anything is written.

A forecast window is a point of a series (the forecast origin) and the ``horizon`` points from it on: the
model reads the points before the origin (its context) and forecasts those. Windows are the examples every
kind of data has: the training windows end before the last ``val_fraction`` of each series (at least one
horizon), the validation windows forecast each point in that last stretch, every origin in turn. Nothing
is shuffled across time. A window's context is cut when a recipe asks for it (its length is a knob); a
window too close to the start of its series for that length repeats its first point before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data import saved_as, write_meta
from tuneloop.data.files import Table, as_text, read_table
from tuneloop.errors import DataError

TIME_NAMES = ("time", "date", "ds", "timestamp", "datetime", "period", "year", "month", "week", "day")
SERIES_NAMES = ("series", "unique_id", "series_id", "id", "symbol", "item", "name")
MIN_CONTEXT = 2  # points before a training window's origin, at least
NAIVE_FLOOR = 1e-8  # a seasonal-naive scale below this (a constant series) is taken as the series' mean level


@dataclass(frozen=True)
class Step:
    """A series' frequency: ``months`` calendar months apart, or ``seconds`` apart (integer times: ``seconds``
    is the integer step, and ``integer`` is set)."""

    months: int = 0
    seconds: float = 0.0
    integer: bool = False

    def describe(self) -> str:
        if self.months:
            return {1: "1 month", 3: "1 quarter", 12: "1 year"}.get(self.months, f"{self.months} months")
        if self.integer:
            return f"{self.seconds:g}"
        for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
            if self.seconds % size == 0:
                count = int(self.seconds // size)
                return f"{count} {unit}{'s' if count > 1 else ''}"
        return f"{self.seconds:g} seconds"

    @property
    def season(self) -> int:
        """The points in one season, as the frequency suggests: 12 a year of months, 4 of quarters, 7 a week
        of days, 24 a day of hours, 52 a year of weeks; 1 (no season) otherwise."""
        if self.months:
            return 12 // self.months if 12 % self.months == 0 else 1
        return {86400.0: 7, 3600.0: 24, 604800.0: 52}.get(float(self.seconds), 1) if not self.integer else 1

    def to_dict(self) -> dict[str, Any]:
        return {"months": self.months, "seconds": self.seconds, "integer": self.integer}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Step:
        return cls(int(stored["months"]), float(stored["seconds"]), bool(stored["integer"]))


@dataclass(frozen=True)
class Series:
    """One series: its name, its times (as read: ISO strings or integers), its values, and where each point is
    in its file ("line 7")."""

    name: str
    times: list[Any]
    values: np.ndarray
    locations: list[str]

    def __len__(self) -> int:
        return len(self.values)


@saved_as("series")
@dataclass(frozen=True)
class SeriesExamples:
    """Forecast windows of some series: for each window its series (by key) and its origin (the position of
    its first forecast point). ``labelled``: the windows' targets are in the data (a window whose origin is
    the series' end forecasts the future, and has none)."""

    series: dict[str, Series]
    keys: list[str]
    origins: list[int]
    horizon: int
    source: str
    step: Step
    time_col: str
    series_col: str | None = None
    value_cols: tuple[str, ...] = ()
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def locations(self) -> list[str]:
        """Where each window's first forecast point is (its series' end for a forecast of the future)."""
        return [f"{key}, {self._origin_place(key, origin)}" for key, origin in self.windows()]

    def windows(self) -> list[tuple[str, int]]:
        """Each window's series key and origin."""
        return list(zip(self.keys, self.origins, strict=True))

    def _origin_place(self, key: str, origin: int) -> str:
        points = self.series[key]
        return points.locations[origin] if origin < len(points) else f"after {points.locations[-1]}"

    def subset(self, indices: Sequence[int] | np.ndarray) -> SeriesExamples:
        indices = [int(i) for i in indices]
        return self._with([self.keys[i] for i in indices], [self.origins[i] for i in indices])

    def _with(self, keys: list[str], origins: list[int], series: dict[str, Series] | None = None,
              source: str | None = None) -> SeriesExamples:
        return SeriesExamples(series if series is not None else self.series, keys, origins, self.horizon,
                              source or self.source, self.step, self.time_col, self.series_col, self.value_cols,
                              self.labelled)

    def joined(self, other: SeriesExamples) -> SeriesExamples:
        """These windows, then ``other``'s (of the same series, or of others)."""
        return self.concat(other) if other.source != self.source else self._with(
            [*self.keys, *other.keys], [*self.origins, *other.origins], {**self.series, **other.series})

    def concat(self, other: SeriesExamples) -> SeriesExamples:
        """These windows, then ``other``'s from another file: its series are kept apart from these (a series
        continued in a later file is a series of its own here), so both horizons must agree."""
        if other.horizon != self.horizon:
            raise ValueError(f"{other.source}: windows of {other.horizon} points ahead do not join windows of "
                             f"{self.horizon}.")
        if other.source == self.source:
            return self.joined(other)
        renamed = {f"{other.source}:{key}": points for key, points in other.series.items()}
        source = f"{self.source} + {other.source}"
        return self._with([*self.keys, *(f"{other.source}:{key}" for key in other.keys)],
                          [*self.origins, *other.origins], {**self.series, **renamed}, source)

    @property
    def has_labels(self) -> bool:
        return self.labelled

    def class_labels(self) -> list[str]:
        raise ValueError(f"{self.source}: forecasts have values, not classes.")

    def targets(self) -> np.ndarray:
        """Each window's ``horizon`` true values (ValueError for forecasts of the future)."""
        if not self.labelled:
            raise ValueError(f"{self.source}: these windows forecast the future; nothing is known of it yet.")
        return np.stack([self.series[key].values[origin:origin + self.horizon] for key, origin in self.windows()])

    def contexts(self, length: int) -> np.ndarray:
        """Each window's ``length`` points before its origin (its series' first point repeated before its
        start where the series is shorter)."""
        out = np.empty((len(self), length), dtype=np.float64)
        for row, (key, origin) in enumerate(self.windows()):
            values = self.series[key].values
            start = origin - length
            if start >= 0:
                out[row] = values[start:origin]
            else:
                out[row, :-start] = values[0]
                out[row, -start:] = values[:origin]
        return out

    def naive_scales(self, season: int) -> np.ndarray:
        """Each window's MASE divisor: the mean absolute seasonal difference of its series before its origin
        (of differences one point apart where that history is shorter than two seasons); a constant history
        takes its mean level instead, so a constant forecast of it scores its relative error."""
        scales = np.empty(len(self), dtype=np.float64)
        for row, (key, origin) in enumerate(self.windows()):
            scales[row] = naive_scale(self.series[key].values[:origin], season)
        return scales

    def future_times(self) -> list[list[str]]:
        """For each window, the times of its forecast points, written like its series' times."""
        return [[future_time(self.series[key].times, self.step, origin + ahead) for ahead in range(self.horizon)]
                for key, origin in self.windows()]

    def plot_forecasts(self, figure: Any, forecasts: np.ndarray, limit: int = 3) -> None:
        """Draw on ``figure`` (matplotlib) up to ``limit`` series, each with ``forecasts`` (windows x horizon, in
        these windows' order) of its windows one horizon apart, dashed, from its first window on."""
        keys = list(dict.fromkeys(self.keys))[:limit]
        for row, key in enumerate(keys, start=1):
            axes = figure.add_subplot(len(keys), 1, row)
            points = self.series[key]
            axes.plot(np.arange(len(points)), points.values, color="#444444", linewidth=1, label="series")
            mine = [(i, origin) for i, (k, origin) in enumerate(self.windows()) if k == key]
            shown = mine[::self.horizon]
            for n, (i, origin) in enumerate(shown):
                steps = np.arange(origin, origin + self.horizon)
                axes.plot(steps, forecasts[i], color="#d62728", linestyle="--", linewidth=1.2,
                          label="forecast" if n == 0 else None)
            axes.set_title(points.name, fontsize=9)
            axes.set_xlabel(f"point (one every {self.step.describe()})")
            axes.legend(loc="upper left", fontsize=8)

    def save(self, folder: Path, stem: str) -> None:
        """``stem``.json in ``folder``: the series the windows are cut from, and the windows."""
        write_meta(folder, stem, {
            "kind": self.saved_name, "source": self.source, "keys": self.keys, "origins": self.origins,
            "horizon": self.horizon, "step": self.step.to_dict(), "time_col": self.time_col,
            "series_col": self.series_col, "value_cols": list(self.value_cols), "labelled": self.labelled,
            "series": {key: {"name": s.name, "times": s.times, "values": s.values.tolist(),
                             "locations": s.locations} for key, s in self.series.items()}})

    @classmethod
    def load_saved(cls, folder: Path, stem: str, meta: dict) -> SeriesExamples:
        series = {key: Series(s["name"], s["times"], np.asarray(s["values"], dtype=np.float64), s["locations"])
                  for key, s in meta["series"].items()}
        return cls(series, meta["keys"], meta["origins"], meta["horizon"], meta["source"],
                   Step.from_dict(meta["step"]), meta["time_col"], meta["series_col"], tuple(meta["value_cols"]),
                   meta["labelled"])

    def fingerprint(self) -> str:
        """A short hash of the windows and the points they read."""
        digest = hashlib.sha256()
        for key, origin in self.windows():
            digest.update(f"{key}\x1d{origin}\x1e".encode())
        for key in sorted(set(self.keys)):
            digest.update(key.encode() + b"\x1d" + np.ascontiguousarray(self.series[key].values).tobytes())
        return digest.hexdigest()[:16]


def naive_scale(history: np.ndarray, season: int) -> float:
    """The mean absolute ``season``-lag difference of ``history`` (lag 1 where it holds fewer than two
    seasons); for a constant history its mean absolute level (1 where that is 0 too)."""
    lag = season if season > 1 and len(history) >= 2 * season else 1
    scale = float(np.mean(np.abs(history[lag:] - history[:-lag]))) if len(history) > lag else 0.0
    if scale > NAIVE_FLOOR:
        return scale
    level = float(np.mean(np.abs(history))) if len(history) else 0.0
    return level if level > NAIVE_FLOOR else 1.0


def seasonal_naive(contexts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The seasonal-naive forecast of each context: its last season repeated (its last point for season 1)."""
    season = max(1, min(season, contexts.shape[1]))
    last = contexts[:, -season:]
    return np.stack([last[:, ahead % season] for ahead in range(horizon)], axis=1)


# -- reading a file ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesFile:
    """The series of one file, checked, and how it was read."""

    series: dict[str, Series]
    step: Step
    source: str
    time_col: str
    series_col: str | None
    value_cols: tuple[str, ...]

    def windows(self, origins: dict[str, list[int]], horizon: int, labelled: bool = True) -> SeriesExamples:
        keys = [key for key in self.series for _ in origins.get(key, [])]
        flat = [origin for key in self.series for origin in origins.get(key, [])]
        return SeriesExamples(self.series, keys, flat, horizon, self.source, self.step, self.time_col,
                              self.series_col, self.value_cols, labelled)


def time_column(table: Table, wanted: str | None) -> str | None:
    """The column named ``wanted``, else the first whose name is a common name for times (or holds one as a
    word: 'order_date'); None where there is none."""
    if wanted is not None:
        if wanted not in table.columns:
            raise DataError(f"{table.path}: --time-col '{wanted}' is not a column; the columns are "
                            f"{', '.join(table.column_names)}.")
        return wanted
    for name in table.column_names:
        words = re.split(r"[^a-z0-9]+", name.lower())
        if name.lower() in TIME_NAMES or any(word in TIME_NAMES for word in words):
            return name
    return None


def read_series_file(path: str | Path, *, time_col: str | None = None, series_col: str | None = None,
                     value_col: str | None = None, table: Table | None = None, check_steps: bool = True
                     ) -> SeriesFile:
    """The checked series of a file (DataError naming the file, line and column of the first problem).
    Without ``check_steps``, only whether it is series at all: a time column, and numbers."""
    table = table if table is not None else read_table(path)
    time_name = time_column(table, time_col)
    if time_name is None:
        raise DataError(f"{table.path}: no time column found (by name: {', '.join(TIME_NAMES)}); name it with "
                        f"--time-col. The columns are {', '.join(table.column_names)}.")
    if series_col is not None and series_col not in table.columns:
        raise DataError(f"{table.path}: --series-col '{series_col}' is not a column; the columns are "
                        f"{', '.join(table.column_names)}.")
    if series_col is None:
        series_col = _id_column(table, time_name, value_col)
    others = [name for name in table.column_names if name not in (time_name, series_col)]
    if value_col is not None:
        if value_col not in table.columns:
            raise DataError(f"{table.path}: the value column '{value_col}' is not a column; the columns are "
                            f"{', '.join(table.column_names)}.")
        others = [value_col]
    if not others:
        raise DataError(f"{table.path}: no value column besides the time column '{time_name}'.")
    if series_col is not None and len(others) > 1:
        raise DataError(f"{table.path}: long format (series in '{series_col}') takes one value column; found "
                        f"{', '.join(others)}. Name it with --label-col.")
    times = [_time(table, i, time_name) for i in range(len(table))]
    groups: dict[str, list[int]] = {}
    if series_col is None:
        groups = {"": list(range(len(table)))}
    else:
        for i, cell in enumerate(table.columns[series_col]):
            name = as_text(cell)
            if name is None:
                raise DataError(f"{table.where(i, series_col)}: the series id is missing.")
            groups.setdefault(name, []).append(i)
    series: dict[str, Series] = {}
    steps: list[tuple[Step, str]] = []
    for group, rows in groups.items():
        step = infer_step(table, [times[i] for i in rows], rows, time_name) if check_steps else Step()
        steps.append((step, group))
        for column in others:
            name = group or column
            values = np.array([_value(table, i, column) for i in rows], dtype=np.float64)
            series[name] = Series(name, [_shown(times[i]) for i in rows], values,
                                  [table.locations[i] for i in rows])
    step, first = steps[0]
    for other, group in steps[1:]:
        if other != step:
            raise DataError(f"{table.path}: series '{group}' steps by {other.describe()}, series '{first}' by "
                            f"{step.describe()}; give series of one frequency in one file.")
    return SeriesFile(series, step, str(table.path), time_name, series_col, tuple(others))


def _id_column(table: Table, time_name: str, value_col: str | None) -> str | None:
    """A column of series ids: named like one, its cells not numbers."""
    for name in table.column_names:
        if name == time_name or name == value_col or name.lower() not in SERIES_NAMES:
            continue
        if any(_number(cell) is None and as_text(cell) is not None for cell in table.columns[name]):
            return name
    return None


def _number(cell: Any) -> float | None:
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)):
        return float(cell)
    text = as_text(cell)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _value(table: Table, row: int, column: str) -> float:
    cell = table.columns[column][row]
    if as_text(cell) is None:
        raise DataError(f"{table.where(row, column)}: the value is missing; a series needs every point (fill or "
                        "interpolate it).")
    value = _number(cell)
    if value is None or not math.isfinite(value):
        raise DataError(f"{table.where(row, column)}: expected a number, found {as_text(cell)!r}.")
    return value


def _time(table: Table, row: int, column: str) -> int | np.datetime64:
    """The row's time: an integer, or a date-time."""
    cell = table.columns[column][row]
    if isinstance(cell, (dt.datetime, dt.date)):
        return np.datetime64(cell.replace(tzinfo=None) if isinstance(cell, dt.datetime) else cell, "s")
    text = as_text(cell)
    if text is None:
        raise DataError(f"{table.where(row, column)}: the time is missing.")
    if re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    try:
        return np.datetime64(text.strip().replace(" ", "T").rstrip("Z"), "s")
    except ValueError:
        raise DataError(f"{table.where(row, column)}: expected a date (2024-01-31), a date and time "
                        f"(2024-01-31T09:00) or an integer, found {text!r}.") from None


def _shown(time: int | np.datetime64, clock: bool = False) -> Any:
    """A time as a series keeps it: an integer, or ISO text (the date alone at midnight, unless ``clock``)."""
    if isinstance(time, int):
        return time
    text = str(time)
    return text[:10] if text.endswith("T00:00:00") and not clock else text


def infer_step(table: Table, times: list[Any], rows: list[int], column: str) -> Step:
    """The one step between consecutive ``times`` (rows ``rows`` of ``table``); DataError at the first time
    out of order, repeated, or after a gap."""
    if len(times) < 2:
        raise DataError(f"{table.where(rows[0])}: a series needs at least two points; this one has "
                        f"{len(times)}.")
    integer = isinstance(times[0], int)
    for i, time in enumerate(times):
        if isinstance(time, int) != integer:
            raise DataError(f"{table.where(rows[i], column)}: this time is "
                            f"{'an integer' if isinstance(time, int) else 'a date'}, the first is "
                            f"{'an integer' if integer else 'a date'}.")
    if integer:
        deltas = np.diff(np.asarray(times, dtype=np.int64)).astype(np.float64)
        step = Step(seconds=_most_common(deltas[deltas > 0]) if (deltas > 0).any() else 1.0, integer=True)
        apart = deltas
    else:
        stamps = np.asarray(times, dtype="datetime64[s]")
        seconds = np.diff(stamps).astype(np.float64)
        months = np.diff(stamps.astype("datetime64[M]").astype(np.int64)).astype(np.float64)
        positive = seconds[seconds > 0]
        regular = positive.size and np.all(positive == positive[0])
        if not regular and (months > 0).any() and _most_common(months[months > 0]) >= 1 and \
                _most_common(positive) >= 27 * 86400:
            step = Step(months=int(_most_common(months[months > 0])))
            apart = np.where(seconds > 0, months, seconds)  # 0 and negative seconds are repeats and disorder
        else:
            step = Step(seconds=_most_common(positive) if positive.size else 86400.0)
            apart = seconds
    size = step.months or step.seconds
    for i, gap in enumerate(apart, start=1):
        if gap == size:
            continue
        here, before = _shown(times[i]), _shown(times[i - 1])
        where = table.where(rows[i], column)
        if gap == 0:
            raise DataError(f"{where}: time {here} repeats the row before's; give each time once per series.")
        if gap < 0:
            raise DataError(f"{where}: time {here} comes before {before}, the row above; sort the rows by time.")
        if gap % size == 0:
            missing = int(gap // size) - 1
            raise DataError(f"{where}: time {here} follows {before}, but the series steps by {step.describe()}: "
                            f"{missing} point{'s are' if missing > 1 else ' is'} missing. Fill the gap.")
        raise DataError(f"{where}: time {here} follows {before}, which is not a whole number of steps of "
                        f"{step.describe()} (the series' most common step).")
    return step


def _most_common(values: np.ndarray) -> float:
    found, counts = np.unique(values, return_counts=True)
    return float(found[counts.argmax()])


def future_time(times: list[Any], step: Step, position: int) -> Any:
    """The time of point ``position`` of a series with ``times`` (beyond its end: stepped on from its last)."""
    if position < len(times):
        return times[position]
    ahead = position - len(times) + 1
    last = times[-1]
    if step.integer:
        return int(last + ahead * step.seconds)
    stamp = np.datetime64(str(last).replace(" ", "T"), "s")
    clock = len(str(last)) > 10  # the series' times have a time of day: so do its forecasts'
    if step.months:  # the series' day of the month (its month ends, where every time is one), clamped
        days = np.asarray([str(t).replace(" ", "T") for t in times], dtype="datetime64[s]")
        months = days.astype("datetime64[M]")
        ends = (months + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
        month_ends = bool(np.all(days.astype("datetime64[D]") == ends))
        day = int((days.astype("datetime64[D]") - months.astype("datetime64[D]")).astype(int).max())
        target = stamp.astype("datetime64[M]") + ahead * step.months
        length = int(((target + 1).astype("datetime64[D]") - target.astype("datetime64[D]")).astype(int))
        offset = length - 1 if month_ends else min(day, length - 1)
        day_part = stamp - stamp.astype("datetime64[D]")
        return _shown(np.datetime64(target.astype("datetime64[D]") + np.timedelta64(offset, "D") + day_part, "s"),
                      clock)
    return _shown(stamp + np.timedelta64(int(ahead * step.seconds), "s"), clock)


def held_out(points: int, horizon: int, val_fraction: float) -> int:
    """The points at a series' end that validation forecasts: its last ``val_fraction``, at least one horizon."""
    return max(horizon, round(val_fraction * points))


def split_origins(file: SeriesFile, horizon: int, val_fraction: float, first: int) -> tuple[dict, dict]:
    """Each series' training origins (forecasts that end before its last ``val_fraction``, at least one
    horizon) and validation origins (every origin whose forecast lies in that last stretch), from ``first``
    points of history on."""
    train, val = {}, {}
    for key, points in file.series.items():
        n = len(points)
        held = held_out(n, horizon, val_fraction)
        train[key] = list(range(first, n - held - horizon + 1))
        val[key] = list(range(n - held, n - horizon + 1))
    return train, val


def check_length(file: SeriesFile, horizon: int, val_fraction: float, first: int) -> None:
    """DataError where a series is too short to train on and validate: it needs ``first`` points of history,
    a training window, and the held-out stretch."""
    for key, points in file.series.items():
        held = held_out(len(points), horizon, val_fraction)
        needed = first + horizon + held
        if len(points) < needed:
            raise DataError(f"{file.source}: series '{key}' has {len(points)} points; forecasting {horizon} "
                            f"ahead with {held} held out for validation needs at least {needed}. Give a "
                            "shorter --horizon or a longer series.")

