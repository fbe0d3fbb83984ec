"""The agent's configuration: `AgentConfig` and ONE table of its settings (`SETTINGS`).

Everything about a setting is declared once, in `SETTINGS` (name, type, range or choices, help, old
flag spellings), and read from there by:

* `AgentConfig` itself: every value is checked when a config is built (`ConfigError`, expected vs got);
* `from_untrusted`: what a checkpoint or a config file gives (JSON types, known keys, ranges, and
  the strategy can be built); `validate_agent_config` is its `CheckpointError` form, the validator
  `edge.checkpoint.CheckpointStore` is given;
* `load_file`: ``--config FILE`` (JSON or TOML), and `check_stored` (a stored state keeps its config);
* `add_arguments`: the command-line flags of ``edge-agent`` and ``edge-sim`` (one spelling each;
  old spellings still parse, hidden, with a one-line deprecation note), and `asked_settings`, which
  merges them: a flag given beats the file, the file beats the default.

The sweep grid (`firmware_sim.sweep.grid`) checks its keys against the same table.

Example:
    >>> AgentConfig(strategy="ncm", max_classes=10).max_classes
    10
    >>> AgentConfig(max_classes=1)
    Traceback (most recent call last):
    ...
    edge.errors.ConfigError: AgentConfig.max_classes: expected an int in [2, 100000], got 1
    >>> from_untrusted({"lr": 0.1, "buffer_capacity": 20}).buffer_capacity
    20
    >>> check_stored(AgentConfig(strategy="replay").to_dict(), {"strategy": "ncm"})
    Traceback (most recent call last):
    ...
    edge.errors.ConfigError: the stored state's config differs from the one asked for: strategy: stored 'replay', asked 'ncm' (use a new --state folder, or drop these settings)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edge.buffer import POLICIES, STORAGES
from edge.errors import CheckpointError, ConfigError
from edge.heads import HEADS, OPTIMIZERS
from edge.strategies import STRATEGIES, make_strategy

__all__ = ["AgentConfig", "HEAD_BACKENDS", "MAX_CONFIG_BYTES", "SETTINGS", "Setting", "add_arguments",
           "asked_settings", "check_stored", "check_values", "flag_settings", "float_in", "from_untrusted",
           "int_in", "load_file", "merge_settings", "parse_key_values", "strategy_params", "validate_agent_config"]

#: Where the head trains: NumPy (`edge.heads`) or inside a ``.tflite`` file (`edge.tflite_head`).
#: Which strategies run on the tflite backend is declared on each class (``supports_tflite_head``).
HEAD_BACKENDS = ("numpy", "tflite")
#: A ``--config`` file larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Setting:
    """One `AgentConfig` field: its type, what values it takes, its help and old flag spellings.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``str|None`` or ``params`` (the strategy's
    parameters: an object of finite numbers, strings, booleans and nulls). Numbers lie in
    ``[low, high]`` (``[low, high)`` when ``high_open``); strings among ``choices`` when given.
    """

    name: str
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # old flag spellings: still parsed, hidden, with a deprecation note

    @property
    def flag(self) -> str:
        """The one command-line spelling (``--buffer-capacity``; ``--strategy-param`` for the parameters)."""
        return "--strategy-param" if self.kind == "params" else "--" + self.name.replace("_", "-")

    def expected(self) -> str:
        """What a valid value looks like, for error messages (``an int in [2, 100000]``)."""
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.kind in ("int", "float") and self.low is not None and self.high is not None:
            close = ")" if self.high_open else "]"
            if self.kind == "int":
                return f"an int in [{int(self.low)}, {int(self.high)}{close}"
            return f"a finite number in [{self.low:g}, {self.high:g}{close}"
        return {"params": "an object of finite numbers/strings/booleans"}.get(self.kind, self.kind)

    def check(self, value: Any, where: str) -> None:
        """`ConfigError` ``<where><name>: expected ..., got ...`` unless ``value`` is valid."""
        label = f"{where}{self.name}"
        if not _TYPE_CHECKS[self.kind](value):
            kind = self.expected() if self.kind == "params" else self.kind
            raise ConfigError(f"{label}: expected {kind}, got {type(value).__name__} {value!r:.60}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{label}: expected one of {list(self.choices)}, got {value!r:.60}")
        if self.low is not None and self.high is not None and not (
                self.low <= value and (value < self.high if self.high_open else value <= self.high)):
            raise ConfigError(f"{label}: expected {self.expected()}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str|None": lambda v: v is None or isinstance(v, str),
    "params": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and (isinstance(x, (str, bool)) or x is None or _is_number(x)) for k, x in v.items()),
}

#: THE table of agent settings, in `AgentConfig` field order. Bounds: a device never needs more,
#: and bigger values would allocate gigabytes (a crafted checkpoint or file is refused).
SETTINGS: tuple[Setting, ...] = (
    Setting("head", "str", "trainable head", choices=tuple(sorted(HEADS))),
    Setting("hidden", "int", "MLP head hidden units", 1, 65_536),
    Setting("optimizer", "str", "head optimizer", choices=OPTIMIZERS),
    Setting("lr", "float", "learning rate", 1e-12, 100.0),
    Setting("momentum", "float", "optimizer momentum", 0.0, 1.0),
    Setting("weight_decay", "float", "L2 weight decay", 0.0, 100.0),
    Setting("epochs", "int", "epochs over each incoming batch", 1, 1_000),
    Setting("batch_size", "int", "mini-batch size", 1, 65_536),
    Setting("max_classes", "int", "head capacity in classes", 2, 100_000),
    Setting("strategy", "str", "continual-learning strategy (see docs/strategies.md)",
            choices=tuple(sorted(STRATEGIES))),
    Setting("strategy_params", "params",
            "strategy hyperparameter, e.g. shrinkage=0.001 (repeatable); with a STRATEGY. prefix "
            "(ewc.ewc_lambda=10) it applies to that strategy only"),
    Setting("buffer_capacity", "int", "replay buffer capacity in patterns", 0, 1_000_000, aliases=("--buffer",)),
    Setting("buffer_policy", "str", "replay buffer policy", choices=POLICIES),
    Setting("buffer_storage", "str", "replay buffer storage", choices=STORAGES, aliases=("--buffer-dtype",)),
    Setting("replay_ratio", "float", "share of replayed patterns per mini-batch", 0.0, 1.0, high_open=True),
    Setting("seed", "int", "random seed", 0, 2**32 - 1),
    Setting("standardize", "bool", "standardise embeddings with the backbone's pretraining statistics"),
    Setting("head_backend", "str", "where the head trains: numpy, or tflite (inside a head .tflite file made "
            "by `edge-host export-head`; naive/replay/cumulative only)", choices=HEAD_BACKENDS),
    Setting("head_file", "str|None", "with --head-backend tflite: the head .tflite file (default: the "
            "model manifest's matching head)"),
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class AgentConfig:
    """Everything that shapes learning; JSON-serialisable (`to_dict` / `from_dict`), checked against `SETTINGS`.

    Example:
        >>> AgentConfig.from_dict(AgentConfig(lr=0.1).to_dict()).lr
        0.1
    """

    head: str = "softmax"
    hidden: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 2
    batch_size: int = 32
    max_classes: int = 50
    strategy: str = "refit_slda"   # docs/strategies.md (issue 23): at or above the joint bound on every stream measured
    strategy_params: dict[str, Any] = field(default_factory=dict)
    buffer_capacity: int = 1000
    buffer_policy: str = "class_balanced"
    buffer_storage: str = "int8"
    replay_ratio: float = 0.75  # share of replayed rows per mini-batch; chosen by firmware_sim.strategy_sweep
    seed: int = 0
    standardize: bool = True
    #: "numpy" (edge.heads) or "tflite" (edge.tflite_head: training runs inside a head .tflite file;
    #: naive/replay/cumulative only). ``head_file`` is that file; None = the matching head listed in the
    #: backbone's manifest (needs a backbone; an embeddings-only agent needs ``head_file``).
    head_backend: str = "numpy"
    head_file: str | None = None

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            setting.check(getattr(self, setting.name), "AgentConfig.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentConfig:
        """Inverse of `to_dict`; unknown keys raise `ConfigError` (a ValueError)."""
        unknown = sorted(set(data) - set(SETTINGS_BY_NAME))
        if unknown:
            raise ConfigError(f"AgentConfig: unknown keys {unknown} (expected a subset of {sorted(SETTINGS_BY_NAME)})")
        return cls(**data)


_DEFAULTS = AgentConfig()
if [f.name for f in dataclasses.fields(AgentConfig)] != list(SETTINGS_BY_NAME):  # pragma: no cover
    raise AssertionError("edge.config: SETTINGS and the AgentConfig fields must list the same names in order")


def _object_name(where: str) -> str:
    return where.rstrip(". :") or "config"


def check_values(data: Any, where: str = "config.") -> dict[str, Any]:
    """Keys and values of an untrusted mapping of settings, checked one by one; a copy of it.

    ``where`` prefixes each message (``config.`` for a checkpoint, ``--config FILE: `` for a file).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{_object_name(where)}: expected an object of AgentConfig fields, got {type(data).__name__}")
    for key, value in data.items():
        setting = SETTINGS_BY_NAME.get(key) if isinstance(key, str) else None
        if setting is None:
            raise ConfigError(f"{_object_name(where)}: expected keys among {sorted(SETTINGS_BY_NAME)}, got {key!r:.60}")
        setting.check(value, where)
    return dict(data)


def from_untrusted(data: Any, where: str = "config.") -> AgentConfig:
    """An `AgentConfig` from untrusted values (a checkpoint's header, a config file, a sweep cell).

    Types are JSON's (an int where an int is expected, a finite number where a float is, ...),
    values lie in the table's ranges, and the strategy can be built with its parameters; anything
    else is a `ConfigError` naming the field, expected vs got.
    """
    config = AgentConfig(**check_values(data, where))
    try:
        make_strategy(config.strategy, **config.strategy_params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_object_name(where)}: expected a valid agent config, got {exc}") from exc
    return config


def validate_agent_config(config: Any) -> None:
    """`from_untrusted` for a checkpoint's config: the validator `edge.checkpoint.CheckpointStore` takes.

    Raises `CheckpointError` (``config.<field>: expected ..., got ...``).
    """
    try:
        from_untrusted(config, "config.")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a ``--config`` file: JSON (``.json``) or TOML (``.toml``), checked by `from_untrusted`.

    The file holds `AgentConfig` fields at the top level (or under an ``agent`` table/object)::

        # agent.toml
        strategy = "slda"
        buffer_capacity = 500
        [strategy_params]
        shrinkage = 0.001
    """
    p = Path(path)
    where = f"--config {p}"
    try:
        with open(p, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: expected a readable file, got {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: expected at most {MAX_CONFIG_BYTES} bytes, got more")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{where}: expected a .json or .toml file, got {suffix or 'no suffix'!r}")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"{where}: expected valid {suffix[1:].upper()}, got {exc}") from exc
    if isinstance(data, dict) and set(data) == {"agent"}:
        data = data["agent"]
    from_untrusted(data, f"{where}: ")
    return dict(data)


def check_stored(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> None:
    """`ConfigError` when a stored state's config differs from explicitly ``asked`` settings."""
    defaults = _DEFAULTS.to_dict()
    diffs = []
    for key, value in asked.items():
        have = stored.get(key, defaults.get(key))
        if json.dumps(have, sort_keys=True) != json.dumps(value, sort_keys=True):
            diffs.append(f"{key}: stored {have!r}, asked {value!r}")
    if diffs:
        raise ConfigError("the stored state's config differs from the one asked for: " + "; ".join(diffs)
                          + " (use a new --state folder, or drop these settings)")


# ------------------------------------------------------------------------------ command line
def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int in [lo, hi], else a one-line usage error naming expected vs got."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r:.40}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an int in [{lo}, {hi}], got {text:.40}")
        return value
    return parse


def float_in(lo: float, hi: float, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] (``[lo, hi)`` when ``high_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r:.40}") from None
        if not (math.isfinite(value) and lo <= value and (value < hi if high_open else value <= hi)):
            raise argparse.ArgumentTypeError(
                f"expected a number in [{lo:g}, {hi:g}{')' if high_open else ']'}, got {text:.40}")
        return value
    return parse


def parse_key_values(items: Sequence[str], option: str) -> dict[str, object]:
    """``KEY=VALUE`` items of a command-line ``option`` -> a dict (ints, floats, true/false, else strings)."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = {"true": True, "false": False}.get(value.lower(), value)
    return params


def strategy_params(items: Sequence[str], strategy: str) -> dict[str, object]:
    """``[STRATEGY.]KEY=VALUE`` items -> the parameters of ``strategy`` (others' prefixed items skipped).

    Example:
        >>> strategy_params(["ewc.ewc_lambda=10", "slda.shrinkage=0.1", "temperature=3"], "ewc")
        {'ewc_lambda': 10, 'temperature': 3}
    """
    mine = []
    for item in items:
        key, sep, value = item.partition("=")
        prefix, dot, name = key.rpartition(".")
        if dot and prefix not in STRATEGIES:
            raise ValueError(f"--strategy-param: expected STRATEGY.KEY=VALUE with a known strategy, got {item!r}")
        if not dot or prefix == strategy:
            mine.append(f"{name}{sep}{value}")
    return parse_key_values(mine, "--strategy-param")


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores like the new one and prints one line of deprecation note."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"{parser.prog}: note: {option_string} is deprecated, use {self.new}\n")
        setattr(namespace, self.dest, values)


def _flag_type(setting: Setting) -> Callable[[str], Any]:
    """The argparse type of a setting's flag: ranges checked as the value is parsed (one-line usage error)."""
    if setting.kind == "int" and setting.low is not None and setting.high is not None:
        return int_in(int(setting.low), int(setting.high))
    if setting.kind == "float" and setting.low is not None and setting.high is not None:
        return float_in(setting.low, setting.high, setting.high_open)
    return str


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, skip: Sequence[str] = ()) -> None:
    """One flag per setting of `SETTINGS` (except ``skip``), plus ``--config FILE``.

    Every default is None ("not given"), so `asked_settings` can tell a flag given (which beats
    the file, even when it equals the default) from one left out (the file's value, else the default).
    """
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="agent settings as JSON or TOML (AgentConfig fields; the same file works for "
                             "edge-agent and edge-sim); a flag given beats the file, the file beats the default")
    for s in SETTINGS:
        if s.name in skip:
            continue
        default = getattr(_DEFAULTS, s.name)
        shown = "" if s.kind in ("params", "str|None") else f" (default {default})"
        if s.kind == "params":
            parser.add_argument(s.flag, dest="strategy_param", action="append", default=None,
                                metavar="[STRATEGY.]KEY=VALUE", help=s.help)
        elif s.kind == "bool":
            parser.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=s.help + shown)
        else:
            metavar = {"int": "N", "float": "X", "str|None": "FILE"}.get(s.kind)
            parser.add_argument(s.flag, dest=s.name, type=_flag_type(s), choices=s.choices or None, default=None,
                                metavar=metavar, help=s.help + shown)
        for alias in s.aliases:
            parser.add_argument(alias, dest=s.name, type=_flag_type(s), choices=s.choices or None, default=None,
                                action=_Deprecated, new=s.flag, help=argparse.SUPPRESS)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (those `add_arguments` made), without ``strategy_params``."""
    return {s.name: getattr(args, s.name) for s in SETTINGS
            if s.kind != "params" and getattr(args, s.name, None) is not None}


def merge_settings(file_values: Mapping[str, Any], flags: Mapping[str, Any], param_items: Sequence[str] = (),
                   strategy: str | None = None) -> dict[str, Any]:
    """A config file's settings, the flags given on top, then ``strategy`` (if any) on top of both.

    The file's ``strategy_params`` are kept only when the file's strategy is the one used;
    ``--strategy-param`` items (`strategy_params`) update them key by key.

    Example:
        >>> merge_settings({"strategy": "slda", "lr": 0.1, "strategy_params": {"shrinkage": 0.1}},
        ...                {"lr": 0.01}, ["slda.shrinkage=0.5"])
        {'strategy': 'slda', 'lr': 0.01, 'strategy_params': {'shrinkage': 0.5}}
    """
    values = dict(file_values)
    file_strategy = values.get("strategy", _DEFAULTS.strategy)
    values.update(flags)
    if strategy is not None:
        values["strategy"] = strategy
    used = values.get("strategy", _DEFAULTS.strategy)
    file_params = dict(values.pop("strategy_params", {}))
    params = file_params if file_strategy == used else {}
    params.update(strategy_params(param_items, used))
    if params:
        values["strategy_params"] = params
    return values


def asked_settings(args: argparse.Namespace, strategy: str | None = None) -> dict[str, Any]:
    """The settings asked for explicitly on a command line made with `add_arguments`: ``--config
    FILE``'s, the flags given on top (a flag given beats the file, the file beats the default, which
    is left to `AgentConfig`); see `merge_settings`."""
    file_values = load_file(args.config) if getattr(args, "config", None) else {}
    return merge_settings(file_values, flag_settings(args), getattr(args, "strategy_param", None) or (), strategy)
