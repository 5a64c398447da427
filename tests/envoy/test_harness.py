"""The Envoy harness itself: ports read back, one base id per instance, nothing left behind,
the log shown when Envoy cannot start, example files changed only in their ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.envoy.harness import EXAMPLES, SHARED_MEMORY, Envoy, envoy_config


def test_two_envoys_side_by_side_get_their_own_ports_and_base_ids(tmp_path: Path) -> None:
    config = envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": 9})
    with Envoy(config, workdir=tmp_path / "a") as a, Envoy(config, workdir=tmp_path / "b") as b:
        assert a.base_id is not None and b.base_id is not None and a.base_id != b.base_id
        assert a.ports["ingress"] != b.ports["ingress"] and a.admin != b.admin
        assert a.request("/").status == b.request("/").status == 200
        memory = [SHARED_MEMORY.format(a.base_id), SHARED_MEMORY.format(b.base_id)]
        assert all(os.path.exists(path) for path in memory)
    assert not any(os.path.exists(path) for path in memory)


def test_an_envoy_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    config = envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": 9})
    del config["static_resources"]["listeners"][0]["address"]
    with pytest.raises(RuntimeError, match=r"(?s)envoy exited with 1.*address is necessary"):
        Envoy(config, workdir=tmp_path).start()


def test_envoy_config_changes_only_the_ports() -> None:
    path = EXAMPLES / "rls.yaml"
    original = yaml.safe_load(path.read_text())
    changed = envoy_config(path, clusters={"limiter": 1234}, listeners={"ingress": 5678})

    def ports(doc: dict) -> list[int]:  # type: ignore[type-arg]
        found = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "port_value":
                        found.append(value)
                        node[key] = None
                    else:
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(doc)
        return found

    assert ports(original) == [9901, 10000, 10001, 8081]
    assert ports(changed) == [0, 5678, 0, 1234]
    assert changed == original  # everything else as in the file


def test_envoy_config_refuses_a_cluster_without_a_port() -> None:
    with pytest.raises(ValueError, match="cluster 'limiter' needs a port"):
        envoy_config(EXAMPLES / "rls.yaml")
    with pytest.raises(ValueError, match=r"no cluster named \['nope'\]"):
        envoy_config(EXAMPLES / "rls.yaml", clusters={"limiter": 1, "nope": 2})
