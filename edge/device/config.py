"""``--config FILE``: an `edge.agent.AgentConfig` as JSON or TOML, shared by edge-agent and edge-sim.

The file holds `AgentConfig` fields at the top level (or under an ``agent`` table/object), e.g.::

    # agent.toml
    strategy = "slda"
    buffer_capacity = 500
    max_classes = 20
    [strategy_params]
    shrinkage = 0.001

Values are checked with the same types and bounds as a checkpoint's config
(`edge.checkpoint.validate_agent_config`). A stored state keeps the config it was created with; a
config that asks for something else is an error (`check_stored`), never silently ignored.

Example:
    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "agent.json")
    >>> _ = open(path, "w").write(json.dumps({"strategy": "ncm", "max_classes": 10}))
    >>> load_config_values(path)
    {'strategy': 'ncm', 'max_classes': 10}
    >>> check_stored(AgentConfig(strategy="replay").to_dict(), {"strategy": "ncm"})
    Traceback (most recent call last):
    ...
    edge.errors.ConfigError: the stored state's config differs from the one asked for: strategy: stored 'replay', asked 'ncm' (use a new --state folder, or drop these settings)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from edge.agent import AgentConfig
from edge.errors import CheckpointError, ConfigError

MAX_CONFIG_BYTES = 1 << 20


def load_config_values(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The `AgentConfig` fields set in a JSON (``.json``) or TOML (``.toml``) file, validated."""
    from edge.checkpoint import validate_agent_config

    p = Path(path)
    try:
        with open(p, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--config {p}: expected a readable file, got {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {p}: expected at most {MAX_CONFIG_BYTES} bytes, got more")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data: Any = tomllib.loads(raw.decode("utf-8"))
        elif suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(f"--config {p}: expected a .json or .toml file, got {suffix or 'no suffix'!r}")
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--config {p}: expected valid {suffix[1:].upper()}, got {exc}") from exc
    if isinstance(data, dict) and set(data) == {"agent"}:
        data = data["agent"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected an object of AgentConfig fields, got {type(data).__name__}")
    try:
        validate_agent_config(data)
    except CheckpointError as exc:
        raise ConfigError(f"--config {p}: {str(exc).replace('config.', '', 1)}") from exc
    return dict(data)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> AgentConfig:
    """An `AgentConfig` from a file, with ``overrides`` (e.g. explicit command-line flags) on top."""
    values = load_config_values(path)
    values.update(overrides)
    return AgentConfig.from_dict(values)


def check_stored(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> None:
    """`ConfigError` when a stored state's config differs from explicitly ``asked`` settings."""
    defaults = AgentConfig().to_dict()
    diffs = []
    for key, value in asked.items():
        have = stored.get(key, defaults.get(key))
        if json.dumps(have, sort_keys=True) != json.dumps(value, sort_keys=True):
            diffs.append(f"{key}: stored {have!r}, asked {value!r}")
    if diffs:
        raise ConfigError("the stored state's config differs from the one asked for: " + "; ".join(diffs)
                          + " (use a new --state folder, or drop these settings)")
