"""Fixtures for the tests that put a real Envoy in front of a real ``limiter serve``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config


@pytest.fixture(scope="module")
def rls_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimiterProcess]:
    """``limiter serve`` with the example rules, for one test module."""
    service = LimiterProcess(EXAMPLES / "rules.yaml", workdir=tmp_path_factory.mktemp("limiter"))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def rls_envoy(
    tmp_path_factory: pytest.TempPathFactory, rls_service: LimiterProcess
) -> Iterator[Envoy]:
    """Envoy with the example per-request configuration, pointed at ``rls_service``."""
    config = envoy_config(EXAMPLES / "rls.yaml", clusters={"limiter": rls_service.grpc_port})
    with Envoy(config, workdir=tmp_path_factory.mktemp("envoy")) as proxy:
        yield proxy
