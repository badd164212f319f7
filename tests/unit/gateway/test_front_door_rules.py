"""Every route has a body limit that fits what it carries, and signed-in routes are known as such."""

from __future__ import annotations

from fastapi.routing import APIRoute

from gateway.settings import GatewaySettings
from gateway.front_door import body_limits, route_rules
from gateway.main import ROUTERS

SETTINGS = GatewaySettings()


def test_every_route_that_takes_a_body_has_its_own_limit() -> None:
    listed = set(body_limits(SETTINGS))
    with_body = {f"{method} {route.path}" for router in ROUTERS for route in router.routes
                 if isinstance(route, APIRoute) and route.body_field is not None for method in route.methods}
    # /user/import and the raw-bytes object write read their bodies themselves (a tar stream, an
    # object's bytes), so FastAPI declares none for them.
    assert with_body | {"POST /user/import", "PUT /user/objects/{type}/{id}/data"} == listed


def test_the_table_names_only_real_routes() -> None:
    real = {f"{rule.method} {rule.path}" for rule in route_rules(ROUTERS, SETTINGS)}
    assert set(body_limits(SETTINGS)) <= real


def test_sign_in_routes_are_small_and_anonymous() -> None:
    rules = {f"{rule.method} {rule.path}": rule for rule in route_rules(ROUTERS, SETTINGS)}
    for route in ("POST /user/salt", "POST /user/login"):
        assert rules[route].max_body_bytes == SETTINGS.max_sign_in_body_bytes <= 4096
        assert not rules[route].signed_in
    assert not rules["POST /user/register"].signed_in
    assert not rules["GET /health"].signed_in


def test_every_route_that_forwards_a_token_is_signed_in() -> None:
    rules = {f"{rule.method} {rule.path}": rule for rule in route_rules(ROUTERS, SETTINGS)}
    for route in ("GET /user/me", "PUT /user/objects/{type}/{id}", "POST /user/import", "GET /user/export",
                  "POST /ai/generate", "POST /ai/generate-image", "POST /user/logout", "POST /user/delete"):
        assert rules[route].signed_in, route


def test_routes_without_a_body_get_the_smallest_limit() -> None:
    rules = {f"{rule.method} {rule.path}": rule for rule in route_rules(ROUTERS, SETTINGS)}
    for route in ("GET /user/me", "GET /user/objects/{type}/{id}", "DELETE /user/objects/{type}/{id}"):
        assert rules[route].max_body_bytes == SETTINGS.max_sign_in_body_bytes
