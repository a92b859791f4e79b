"""The controller's two input files refuse nonsense, naming the field and the value, before the
controller starts (controller_app.config)."""
from __future__ import annotations

import math

import pytest

from controller_app.config import ClusterDescription, ConfigError, ControllerConfig
from tests.controller_rig import cluster_dict


@pytest.mark.parametrize("field, value", [
    ("seed", -1),
    ("rule_idle_timeout_s", 70_000),  # OpenFlow's idle_timeout is 16 bits
    ("rule_idle_timeout_s", -1),
    ("quiet_ms", -5),
    ("token", "x"),
    ("token", "fifteen-chars!!"),
    ("nf_timeout_s", -1.0),
])
def test_controller_config_refuses_out_of_range_values(tmp_path, field, value):
    with pytest.raises(ConfigError) as error:
        ControllerConfig.from_dict({"transition_log": str(tmp_path / "t.jsonl"), field: value})
    assert error.value.field == field
    assert field in str(error.value) and (field == "token" or repr(value) in str(error.value))
    assert field != "token" or value not in str(error.value)  # a token is never echoed


def test_controller_config_accepts_the_edges_of_each_range(tmp_path):
    config = ControllerConfig.from_dict({"transition_log": str(tmp_path / "t.jsonl"), "seed": 0,
                                         "rule_idle_timeout_s": 65535, "token": "s" * 16})
    assert (config.seed, config.rule_idle_timeout_s) == (0, 65535)
    made_later = ControllerConfig.from_dict({"transition_log": str(tmp_path / "new" / "t.jsonl")})
    assert made_later.transition_log.endswith("t.jsonl")  # the log's directories are made when it is written


def test_the_transition_log_must_be_a_writable_file(tmp_path):
    (tmp_path / "file").write_text("")
    for path, names in [(tmp_path, "directory"), (tmp_path / "file" / "t.jsonl", "not a directory"), ("", "empty"),
                        ("/proc/1/t.jsonl", "not writable")]:  # /proc/<pid> refuses new files, even to root
        with pytest.raises(ConfigError, match=names) as error:
            ControllerConfig.from_dict({"transition_log": str(path)})
        assert error.value.field == "transition_log" and str(path) in str(error.value)


def _nf(cluster: dict) -> dict:
    return cluster["hosts"][2]


@pytest.mark.parametrize("where, key, value", [
    ("source", "port", -1),
    ("source", "port", 2**40),
    ("source", "port", 0),
    ("nf", "port", 0xFFFFFF01),  # OFPP_MAX + 1: a reserved OpenFlow port
    ("cluster", "dpid", -1),
    ("cluster", "dpid", 2**64),
    ("nf", "capacity_pps", math.inf),
    ("nf", "capacity_pps", math.nan),
    ("nf", "buffer_packets", math.inf),
    ("nf", "processing_ms", math.nan),
    ("nf", "processing_ms", -1.0),
    ("sink", "mac", "zz"),
    ("nf", "mac", "00:00:00:00:00"),
    ("nf", "instance", ""),
    ("nf", "control_socket", ""),
    ("nf", "port", "3"),
    ("nf", "active", "yes"),
])
def test_cluster_description_refuses_nonsense_naming_field_and_value(where, key, value):
    cluster = cluster_dict()
    target = {"cluster": cluster, "source": cluster["hosts"][0], "sink": cluster["hosts"][1],
              "nf": _nf(cluster)}[where]
    target[key] = value
    with pytest.raises(ConfigError) as error:
        ClusterDescription.from_dict(cluster)
    assert error.value.field is not None and error.value.field.endswith(key)
    assert key in str(error.value) and repr(value) in str(error.value)


def test_instance_ids_are_unique():
    cluster = cluster_dict()
    cluster["hosts"][3]["instance"] = _nf(cluster)["instance"]
    with pytest.raises(ConfigError, match="'nf1'"):
        ClusterDescription.from_dict(cluster)


def test_cluster_description_accepts_the_edges_of_each_range():
    cluster = cluster_dict()
    cluster["dpid"] = 2**64 - 1
    _nf(cluster).update(port=0xFFFFFF00, processing_ms=0, mac="AA:bb:CC:dd:EE:ff")
    description = ClusterDescription.from_dict(cluster)
    assert description.dpid == 2**64 - 1 and description.nfs[0].processing_ms == 0.0
