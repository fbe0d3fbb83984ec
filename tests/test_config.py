"""One configuration (`edge.config`): the same settings through a file, through flags and through
both give the same `AgentConfig` in ``edge-agent`` and ``edge-sim`` (a flag beats the file, the file
beats the default); old spellings still work with a note; bad values say expected vs got; the
checkpoint store sits below the configuration in the import graph."""

from __future__ import annotations

import ast
import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _edge_common import ROOT, frames_for, need_model
from edge.config import (SETTINGS, SETTINGS_BY_NAME, AgentConfig, check_stored, from_untrusted, load_file,
                         validate_agent_config)
from edge.cli import _config_from_args, main
from edge.cli import build_parser as agent_parser
from edge.errors import CheckpointError, ConfigError
from edge.lock import DEFAULT_TIMEOUT_S, StateLock
from firmware_sim.commands.cli import build_parser as sim_parser
from firmware_sim.commands.run import _config, options_from_args

#: Settings away from every default, and the same settings as flags (one spelling each).
TUNED = {"strategy": "slda", "strategy_params": {"shrinkage": 0.01}, "buffer_capacity": 300, "lr": 0.05,
         "max_classes": 20, "buffer_storage": "float16", "head": "mlp", "hidden": 64, "seed": 7,
         "standardize": False, "replay_ratio": 0.5, "momentum": 0.5}
TUNED_FLAGS = ["--strategy", "slda", "--strategy-param", "shrinkage=0.01", "--buffer-capacity", "300", "--lr", "0.05",
               "--max-classes", "20", "--buffer-storage", "float16", "--head", "mlp", "--hidden", "64", "--seed", "7",
               "--no-standardize", "--replay-ratio", "0.5", "--momentum", "0.5"]


def agent_config(*flags: str) -> AgentConfig:
    """The config ``edge-agent`` builds for these flags (its real parser; ``learn``'s options)."""
    args = agent_parser().parse_args(["learn", "--state", "s", "--label", "0", *flags, "a.png"])
    return _config_from_args(args)


def sim_config(*flags: str, command: str = "run") -> AgentConfig:
    """The config ``edge-sim run`` (or ``device``) builds for these flags (its real parser)."""
    return _config(options_from_args(sim_parser().parse_args([command, *flags, "--out", "o"])))


BOTH_CLIS = pytest.mark.parametrize("build", [agent_config, sim_config], ids=["edge-agent", "edge-sim"])


def test_the_table_is_agent_config():
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(AgentConfig)]
    defaults = AgentConfig()
    for setting in SETTINGS:  # every default passes its own check; the table names a type for each
        setting.check(getattr(defaults, setting.name), "")
    assert from_untrusted(defaults.to_dict()) == defaults


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@BOTH_CLIS
def test_file_flags_and_both_give_the_same_config(tmp_path, build, suffix):
    path = tmp_path / f"agent{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(TUNED))
    else:
        scalars = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TUNED.items() if k != "strategy_params")
        path.write_text(scalars + "\n[strategy_params]\nshrinkage = 0.01\n")
    want = AgentConfig(**TUNED)
    assert want != AgentConfig()
    assert build("--config", str(path)) == want
    assert build(*TUNED_FLAGS) == want
    assert build("--config", str(path), *TUNED_FLAGS) == want
    assert build() == AgentConfig()  # nothing given: the defaults


@BOTH_CLIS
def test_a_flag_beats_the_file_even_at_its_default_and_the_file_beats_the_default(tmp_path, build):
    path = tmp_path / "agent.toml"
    path.write_text('head = "mlp"\nseed = 7\nlr = 0.05\nstrategy = "slda"\n[strategy_params]\nshrinkage = 0.01\n')
    config = build("--config", str(path), "--head", "softmax", "--seed", "0", "--strategy-param", "shrinkage=0.5")
    assert (config.head, config.seed) == ("softmax", 0)  # flags equal to the defaults still win
    assert (config.lr, config.strategy) == (0.05, "slda")  # the file's, where no flag is given
    assert config.strategy_params == {"shrinkage": 0.5}  # a parameter flag beats the file's parameter
    assert config.buffer_capacity == AgentConfig().buffer_capacity  # neither: the default
    # another strategy than the file's: the file's parameters (for slda) are dropped, not misapplied
    assert build("--config", str(path), "--strategy", "ncm").strategy_params == {}


def test_edge_sim_compare_and_device_use_the_same_settings(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(TUNED))
    args = sim_parser().parse_args(["compare", "--strategies", "slda,ewc", "--config", str(path), "--out", "o"])
    slda, ewc = (_config(options_from_args(args), name) for name in ("slda", "ewc"))
    assert slda == AgentConfig(**TUNED)
    assert ewc == dataclasses.replace(AgentConfig(**TUNED), strategy="ewc", strategy_params={})
    assert sim_config("--config", str(path), "--seed", "0", command="device") == \
        dataclasses.replace(AgentConfig(**TUNED), seed=0)


@BOTH_CLIS
def test_old_spellings_work_with_one_line_of_deprecation_note(build, capsys):
    capsys.readouterr()
    old = build("--buffer", "300", "--buffer-dtype", "float16")
    err = capsys.readouterr().err.splitlines()
    assert old == build("--buffer-capacity", "300", "--buffer-storage", "float16")
    assert old.buffer_capacity == 300 and old.buffer_storage == "float16"
    assert len(err) == 2, err
    assert "--buffer is deprecated, use --buffer-capacity" in err[0]
    assert "--buffer-dtype is deprecated, use --buffer-storage" in err[1]
    assert capsys.readouterr().err == ""  # the new spellings say nothing


@pytest.mark.parametrize("argv", [["edge-agent", "learn"], ["edge-agent", "run"], ["edge-sim", "run"],
                                  ["edge-sim", "compare"], ["edge-sim", "device"]])
def test_help_shows_one_spelling_per_setting(argv, capsys):
    parser = agent_parser() if argv[0] == "edge-agent" else sim_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([argv[1], "--help"])
    text = capsys.readouterr().out
    for setting in SETTINGS:
        if setting.name == "strategy" and argv[1] == "compare":
            continue  # compare takes --strategies
        assert setting.flag in text, setting.flag
        for alias in setting.aliases:
            assert f"{alias} " not in text and f"{alias}\n" not in text, alias


@pytest.mark.parametrize(("values", "pattern"), [
    ({"lr": "fast"}, r"config\.lr: expected float, got str 'fast'"),
    ({"lr": float("inf")}, r"config\.lr: expected float, got float inf"),
    ({"max_classes": 1}, r"config\.max_classes: expected an int in \[2, 100000\], got 1"),
    ({"max_classes": 2.0}, r"config\.max_classes: expected int, got float"),
    ({"replay_ratio": 1.0}, r"config\.replay_ratio: expected a finite number in \[0, 1\), got 1\.0"),
    ({"head": "cnn"}, r"config\.head: expected one of \['mlp', 'softmax'\], got 'cnn'"),
    ({"standardize": 1}, r"config\.standardize: expected bool, got int"),
    ({"strategy_params": {"k": [1]}}, r"config\.strategy_params: expected an object of finite"),
    ({"strategy": "slda", "strategy_params": {"nope": 1}}, r"config: expected a valid agent config, got .*nope"),
    ({"buffer": 10}, r"config: expected keys among \[.*'buffer_capacity'.*\], got 'buffer'"),
])
def test_bad_values_name_expected_and_got(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_untrusted(values)
    with pytest.raises(CheckpointError, match=pattern):  # what the checkpoint store is given
        validate_agent_config(values)


def test_agent_config_checks_itself_against_the_table():
    with pytest.raises(ConfigError, match=r"AgentConfig\.epochs: expected an int in \[1, 1000\], got 0"):
        AgentConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"AgentConfig\.buffer_policy: expected one of"):
        AgentConfig(buffer_policy="fifo")
    with pytest.raises(ConfigError, match=r"unknown keys \['buffer'\]"):
        AgentConfig.from_dict({"buffer": 3})


def test_a_bad_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text('{"buffer_capacity": 5000000}')
    with pytest.raises(ConfigError, match=rf"--config {path}: buffer_capacity: expected an int in \[0, 1000000\]"):
        load_file(path)
    path.write_text('{"agent": {"strategy": "ncm"}}')
    assert load_file(path) == {"strategy": "ncm"}


@pytest.mark.parametrize("cli", ["edge-agent", "edge-sim"])
def test_a_flag_out_of_range_is_a_one_line_usage_error(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        if cli == "edge-agent":
            agent_config("--replay-ratio", "1")
        else:
            sim_config("--replay-ratio", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--replay-ratio: expected a number in [0, 1), got 1" in err, err


def test_check_stored_names_both_values():
    check_stored(AgentConfig().to_dict(), {"buffer_capacity": 1000})
    with pytest.raises(ConfigError, match=r"buffer_capacity: stored 1000, asked 300"):
        check_stored(AgentConfig().to_dict(), {"buffer_capacity": 300})


def _edge_imports(path: Path) -> set[str]:
    """Every ``edge.*`` module a source file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "edge" or n.startswith("edge.")}


def test_the_import_graph_has_the_store_below_the_configuration_below_the_agent():
    # the store reads the ledger's segment files (`edge.knowledge.segments`, a file format, and the ledger's
    # JSON reader: both on edge.errors / edge.manifest only)
    assert _edge_imports(ROOT / "edge" / "checkpoint.py") <= {"edge.atomic", "edge.errors", "edge.manifest",
                                                               "edge.knowledge"}
    assert _edge_imports(ROOT / "edge" / "knowledge" / "segments.py") <= {"edge.errors", "edge.knowledge.ledger"}
    assert _edge_imports(ROOT / "edge" / "knowledge" / "ledger.py") <= {"edge.errors", "edge.manifest"}
    assert _edge_imports(ROOT / "edge" / "knowledge" / "__init__.py") == set()
    assert _edge_imports(ROOT / "edge" / "config.py") <= {"edge.buffer", "edge.errors", "edge.heads",
                                                           "edge.strategies"}
    for name in ("run.py", "cli.py", "device.py"):
        assert not {m for m in _edge_imports(ROOT / "firmware_sim" / "commands" / name) if m.startswith("edge.device")}
    assert not (ROOT / "edge" / "device" / "config.py").exists()
    assert "edge.config" in _edge_imports(ROOT / "firmware_sim" / "sweep" / "grid.py")
    assert set(SETTINGS_BY_NAME) >= {"buffer_capacity", "buffer_storage"}


# ------------------------------------------------------------------- issue 24 item 5: the lock timeout
def test_each_command_has_its_own_lock_timeout_default():
    learn = agent_parser().parse_args(["learn", "--state", "s", "--label", "0", "a.png"])
    run = agent_parser().parse_args(["run", "--state", "s", "--source", "camera:0"])
    assert learn.lock_timeout == DEFAULT_TIMEOUT_S == 10.0  # run's default must not leak into learn's
    assert run.lock_timeout == 0.0


def test_overlapping_learns_both_succeed_with_the_default_timeout(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.fromarray(frames_for(np.array([0]), (32, 32, 3), seed=1)[0]).save(image)
    state = tmp_path / "state"
    state.mkdir()
    held = threading.Event()

    def other_writer() -> None:  # another writer holds the state folder for a moment
        with StateLock(state, timeout_s=0.0):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert held.wait(10)
    started = time.monotonic()
    code = main(["learn", "--model", str(need_model()), "--state", str(state), "--label", "cup", str(image)])
    thread.join()
    assert code == 0  # waited for the lock (default 10 s), then learned
    assert time.monotonic() - started >= 0.5


def test_sweep_grid_keys_are_the_table(tmp_path):
    from firmware_sim.sweep.grid import AGENT_FIELDS, expand, parse_grid

    assert AGENT_FIELDS == set(SETTINGS_BY_NAME) - {"strategy", "strategy_params", "seed"}
    cells = expand(parse_grid({"sweep": {"model": "/m"}, "grid": {"buffer_capacity": [10]},
                               "strategies": {"replay": {}}}))
    assert cells[0].agent == AgentConfig(buffer_capacity=10, strategy="replay").to_dict()
    with pytest.raises(ValueError, match="unknown key 'buffer'"):
        parse_grid({"grid": {"buffer": [10]}, "strategies": {"replay": {}}})
