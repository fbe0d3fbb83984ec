"""A sweep grid (TOML) and its cells: the cross product of the axes, less the ``exclude`` entries.

Grid file (``docs/sweep-example.toml`` is a worked one)::

    [sweep]                       # fixed settings of every cell (any of them may be an axis in [grid])
    model = "../models/tiny"   # relative paths are relative to the grid file
    data = "synthetic"
    runs = 2                      # shorthand for run = [0, 1]

    [grid]                        # axes: every list is crossed with the others
    scenario = ["nicv2_79"]
    buffer_capacity = [200, 1000]

    [strategies]                  # strategy -> its own parameter lists (crossed within the strategy)
    naive = {}
    replay = { replay_ratio = [0.5, 0.75] }

    [[exclude]]                   # drop every cell that matches all keys of one entry
    strategy = "naive"
    buffer_capacity = 1000

Simulation keys are :data:`SIM_DEFAULTS`; agent keys are the settings of `edge.config.SETTINGS` (the
`edge.agent.AgentConfig` fields, checked with the same types and ranges as a config file);
any other key of a strategy's table is one of its ``strategy_params``. A cell is keyed by the hash of
its full configuration (sorted JSON), so a finished cell is recognised in a later sweep.

Example:
    >>> grid = parse_grid({"sweep": {"model": "/m", "runs": 2}, "grid": {"buffer_capacity": [10, 20]},
    ...                    "strategies": {"naive": {}, "replay": {"replay_ratio": [0.5]}},
    ...                    "exclude": [{"strategy": "naive", "buffer_capacity": 20}]})
    >>> cells = expand(grid)
    >>> len(cells), sorted({c.agent["strategy"] for c in cells}), len({c.key for c in cells})
    (6, ['naive', 'replay'], 6)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edge.config import SETTINGS_BY_NAME, from_untrusted
from edge.strategies import STRATEGIES

__all__ = ["AGENT_FIELDS", "Cell", "Grid", "KEY_VERSION", "SIM_DEFAULTS", "cell_key", "expand", "load_grid",
           "parse_grid"]

#: Bumped when what a cell computes changes, so old results are not mistaken for new ones.
KEY_VERSION = 1

#: Simulation settings of a cell and their defaults (those of ``edge-sim run``, but one runtime thread:
#: cells run in parallel, one CPU each).
SIM_DEFAULTS: dict[str, Any] = {
    "model": "models/tiny",
    "data": "synthetic",
    "scenario": "nicv2_391",
    "run": 0,
    "runtime": "auto",
    "precision": "fp32",
    "threads": 1,
    "test": "full",
    "labels": "object",
    "seed": 0,
    "protocol_params": {},
    "test_split": None,
    "eval_every": 1,
    "latency_frames": 100,
}
AGENT_FIELDS = frozenset(SETTINGS_BY_NAME) - {"strategy", "strategy_params", "seed"}
_SECTIONS = {"sweep", "grid", "strategies", "exclude"}


@dataclass(frozen=True)
class Cell:
    """One point of the grid: simulation settings, the agent configuration, and their hash ``key``."""

    sim: dict[str, Any]
    agent: dict[str, Any]
    key: str = ""

    @property
    def stream_spec(self) -> dict[str, Any]:
        """What the cell's stream depends on (cells that agree here share one embedding pass)."""
        names = ("model", "data", "scenario", "run", "runtime", "precision", "test", "labels", "seed",
                 "protocol_params", "test_split")
        return {n: self.sim[n] for n in names}

    @property
    def group(self) -> str:
        """Hash of the configuration without ``run``: the cells a mean +- std over runs is taken over."""
        return cell_key({**self.sim, "run": None}, self.agent)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "group": self.group, "sim": self.sim, "agent": self.agent}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return make_cell(dict(data["sim"]), dict(data["agent"]))


@dataclass(frozen=True)
class Grid:
    """A parsed grid: fixed settings, axes, per-strategy parameter axes and exclusions."""

    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    strategies: dict[str, dict[str, list[Any]]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


def cell_key(sim: Mapping[str, Any], agent: Mapping[str, Any]) -> str:
    """sha256 (first 20 hex digits) of the sorted JSON of a full cell configuration."""
    text = json.dumps({"version": KEY_VERSION, "sim": sim, "agent": agent}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def make_cell(sim: dict[str, Any], agent: dict[str, Any]) -> Cell:
    """A cell with its key; ``agent`` is validated (`edge.config.from_untrusted`) and normalised."""
    config = from_untrusted(agent, "")
    normal = config.to_dict()
    return Cell(sim=sim, agent=normal, key=cell_key(sim, normal))


def load_grid(path: str | Path) -> Grid:
    """Read a grid TOML file; relative model and data paths are taken relative to the file."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--grid {p}: expected a TOML file, got a syntax error: {exc}") from None
    return parse_grid(raw, base=p.resolve().parent, source=str(p))


def _as_list(name: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"grid axis {name!r}: expected at least one value, got an empty list")
    return values


def _resolve_path(name: str, value: Any, base: Path | None) -> Any:
    if base is None or not isinstance(value, str):
        return value
    if name == "model":
        return str((base / value).resolve()) if not Path(value).is_absolute() else value
    if name == "data":
        prefix, sep, rest = value.partition(":")
        if sep and rest and not Path(rest).is_absolute():
            return f"{prefix}:{(base / rest).resolve()}"
    return value


def _check_key(name: str, where: str) -> None:
    if name not in SIM_DEFAULTS and name not in AGENT_FIELDS and name != "runs":
        known = ", ".join(sorted(set(SIM_DEFAULTS) | AGENT_FIELDS))
        raise ValueError(f"grid [{where}]: unknown key {name!r}; expected one of {known} "
                         "(strategy parameters go in [strategies])")


def parse_grid(raw: Mapping[str, Any], base: Path | None = None, source: str = "") -> Grid:
    """A `Grid` from the TOML tables (``base``: folder relative paths start from; None leaves them)."""
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ValueError(f"grid: unknown section(s) {unknown}; expected {sorted(_SECTIONS)}")
    fixed: dict[str, Any] = {}
    for name, value in dict(raw.get("sweep", {})).items():
        _check_key(name, "sweep")
        fixed[name] = value
    axes: dict[str, list[Any]] = {}
    for name, value in dict(raw.get("grid", {})).items():
        _check_key(name, "grid")
        axes[name] = _as_list(name, value)
    for name in ("runs",):
        for table in (fixed, axes):
            if name in table:
                count = table.pop(name)
                count = count[0] if isinstance(count, list) and len(count) == 1 else count
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise ValueError(f"grid runs: expected a number of runs >= 1, got {count!r}")
                axes["run"] = list(range(count))
    for name in list(fixed):
        if name in axes:
            raise ValueError(f"grid: {name!r} is both fixed ([sweep]) and an axis ([grid]); expected one of them")
    fixed = {k: _resolve_path(k, v, base) for k, v in fixed.items()}
    axes = {k: [_resolve_path(k, v, base) for v in vs] for k, vs in axes.items()}
    strategies: dict[str, dict[str, list[Any]]] = {}
    raw_strategies = raw.get("strategies", {})
    if not raw_strategies:
        raise ValueError("grid [strategies]: expected at least one strategy (e.g. replay = {}), got none")
    for name, params in dict(raw_strategies).items():
        if name not in STRATEGIES:
            raise ValueError(f"grid [strategies]: expected one of {', '.join(sorted(STRATEGIES))}, got {name!r}")
        if not isinstance(params, Mapping):
            raise ValueError(f"grid [strategies] {name}: expected a table of parameter lists, got {params!r}")
        strategies[name] = {k: _as_list(f"{name}.{k}", v) for k, v in params.items()}
    exclude = raw.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise ValueError(f"grid [[exclude]]: expected a list of tables, got {exclude!r}")
    return Grid(fixed=fixed, axes=axes, strategies=strategies, exclude=[dict(e) for e in exclude], source=source)


def _matches(entry: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(k in values and values[k] == v for k, v in entry.items())


def expand(grid: Grid) -> list[Cell]:
    """Every cell of ``grid`` (cross product of the axes and each strategy's parameters, less exclusions)."""
    cells: list[Cell] = []
    seen: set[str] = set()
    axis_names = list(grid.axes)
    for combo in itertools.product(*(grid.axes[n] for n in axis_names)):
        point = {**grid.fixed, **dict(zip(axis_names, combo))}
        for strategy, params in grid.strategies.items():
            names = list(params)
            for values in itertools.product(*(params[n] for n in names)):
                chosen = dict(zip(names, values))
                flat = {**point, "strategy": strategy, **chosen}
                if any(_matches(e, flat) for e in grid.exclude):
                    continue
                sim = {**SIM_DEFAULTS, **{k: v for k, v in point.items() if k in SIM_DEFAULTS}}
                agent: dict[str, Any] = {k: v for k, v in point.items() if k in AGENT_FIELDS}
                agent.update({k: v for k, v in chosen.items() if k in AGENT_FIELDS})
                agent["strategy"] = strategy
                agent["seed"] = sim["seed"]
                agent["strategy_params"] = {k: v for k, v in chosen.items() if k not in AGENT_FIELDS}
                try:
                    cell = make_cell(sim, agent)
                except ValueError as exc:
                    raise ValueError(f"grid cell {flat}: {exc}") from None
                if cell.key not in seen:
                    seen.add(cell.key)
                    cells.append(cell)
    if not cells:
        raise ValueError("grid: expected at least one cell, got none (every cell excluded?)")
    return cells


def describe(cell: Cell, varying: set[str]) -> str:
    """A short label for ``cell`` from the keys that vary across the sweep (``run`` left out)."""
    values = {**cell.sim, **cell.agent, **cell.agent.get("strategy_params", {})}
    parts = [str(cell.agent["strategy"])]
    parts += [f"{k}={values[k]}" for k in sorted(varying) if k not in ("strategy", "run", "seed") and k in values]
    return " ".join(parts)


def varying_keys(cells: list[Cell]) -> set[str]:
    """Keys (simulation, agent or strategy parameter) whose value differs between cells."""
    seen: dict[str, set[str]] = {}
    for cell in cells:
        values = {**cell.sim, **{k: v for k, v in cell.agent.items() if k != "strategy_params"},
                  **cell.agent.get("strategy_params", {})}
        for k, v in values.items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    keys = {k for k, vs in seen.items() if len(vs) > 1}
    # a key present in some cells only (a strategy's own parameter) varies too
    counts = {k: sum(1 for c in cells if k in c.agent.get("strategy_params", {})) for k in seen}
    return keys | {k for k, n in counts.items() if 0 < n < len(cells)}
