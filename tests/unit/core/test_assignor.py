"""``kafka.assignor``: the processors' and the sinks' groups share partitions by range unless the config asks for
cooperative-sticky; a value librdkafka would not take is a config error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.exceptions import ConfigError
from processors.service import consumer_overrides
from sinks.params import SinkParams
from tests.demo_config import demo_config

pytestmark = pytest.mark.unit


def _strategies(path: Path) -> tuple[str, str]:
    cfg = load_config(path)
    sink = SinkParams.from_config(cfg, kafka="b", registry="r", target_dsn="dbname=t")
    return (consumer_overrides(cfg)["partition.assignment.strategy"],
            sink.consumer_config["partition.assignment.strategy"])


def test_the_groups_use_range_by_default(tmp_path: Path) -> None:
    assert _strategies(demo_config(tmp_path)) == ("range", "range")


def test_cooperative_sticky_is_taken_by_the_processors_and_the_sinks(tmp_path: Path) -> None:
    assert _strategies(demo_config(tmp_path, kafka={"assignor": "cooperative-sticky"})) == ("cooperative-sticky",) * 2


def test_an_assignor_librdkafka_would_not_take_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.assignor"):
        load_config(demo_config(tmp_path, kafka={"assignor": "roundrobin-ish"}))
