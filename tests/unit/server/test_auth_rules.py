"""Every RPC of the API has an authorization rule, and bearer metadata is read as clients send it."""

from __future__ import annotations

import pytest

from runyard.server.api.auth import ADMIN, RULES, USER, bearer_secret
from runyard.v1 import admin_service_pb2, experiment_service_pb2, run_service_pb2, usage_service_pb2


def test_every_method_of_every_service_has_a_rule() -> None:
    modules = (experiment_service_pb2, run_service_pb2, admin_service_pb2, usage_service_pb2)
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(RULES)
    assert set(RULES.values()) == {USER, ADMIN}


def test_admin_service_is_for_admins_but_whoami_and_server_info() -> None:
    admin = {name.rsplit("/", 1)[1] for name, rule in RULES.items() if "AdminService" in name and rule == USER}
    assert admin == {"WhoAmI", "GetServerInfo"}


@pytest.mark.parametrize(
    ("metadata", "secret"),
    [
        ((("authorization", "Bearer ry_abc"),), "ry_abc"),
        ((("Authorization", "bearer  ry_abc "),), "ry_abc"),
        ((("x-other", "1"), ("authorization", b"Bearer ry_b")), "ry_b"),
        ((("authorization", "Basic dXNlcjpwdw=="),), ""),
        ((("authorization", "Bearer"),), ""),
        ((), ""),
        (None, ""),
    ],
)
def test_bearer_secret(metadata: object, secret: str) -> None:
    assert bearer_secret(metadata) == secret
