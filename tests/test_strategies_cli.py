"""Strategies are selectable by name, with parameters, in `edge-sim` and `edge-agent`."""

from __future__ import annotations

import argparse

import pytest

from edge.cli import _config_from_args
from edge.cli import build_parser as agent_parser
from edge.strategies import STRATEGIES
from firmware_sim.commands.cli import build_parser as sim_parser
from edge.config import strategy_params
from firmware_sim.commands.run import _config, options_from_args


def test_strategy_params_apply_unprefixed_to_all_and_prefixed_to_one():
    items = ["ewc.ewc_lambda=10", "lwf.alpha=0.5", "temperature=3"]
    assert strategy_params(items, "ewc") == {"ewc_lambda": 10, "temperature": 3}
    assert strategy_params(items, "lwf") == {"alpha": 0.5, "temperature": 3}
    with pytest.raises(ValueError, match="known strategy"):
        strategy_params(["si.c=1"], "ewc")
    with pytest.raises(ValueError, match="--strategy-param"):
        strategy_params(["ewc.oops"], "ewc")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_is_a_choice_of_edge_sim_and_edge_agent(name):
    args = sim_parser().parse_args(["run", "--strategy", name, "--out", "x"])
    assert _config(options_from_args(args), name).strategy == name
    args = agent_parser().parse_args(["status", "--model", "m", "--state", "s", "--strategy", name])
    assert _config_from_args(args).strategy == name


def test_strategy_parameters_reach_the_agent_config():
    args = sim_parser().parse_args(["compare", "--strategies", "slda,ewc", "--strategy-param", "slda.shrinkage=0.01",
                                    "--out", "x"])
    assert _config(options_from_args(args), "slda").strategy_params == {"shrinkage": 0.01}
    assert _config(options_from_args(args), "ewc").strategy_params == {}
    args = agent_parser().parse_args(["learn", "--model", "m", "--state", "s", "--label", "1", "--strategy", "ewc",
                                      "--strategy-param", "ewc_lambda=5", "--strategy-param", "gamma=0.9", "a.png"])
    assert isinstance(args, argparse.Namespace)
    assert _config_from_args(args).strategy_params == {"ewc_lambda": 5, "gamma": 0.9}
