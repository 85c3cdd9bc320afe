"""Notifications over HTTP (DESIGN.md sections 7 and 8): /subscriptions/ and /deliveries/
against real servers on both databases, a real webhook receiver, and tokens from
`versioner-server token create`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from tests.conftest import RunningServer, start_server
from tests.governance_support import create_token
from tests.receiver import Receiver
from tests.test_server_process import wait_until
from versioner_grpc.rest import notifications as routes

TIMEOUT = 10.0
SECRET = "s3cret-s3cret-s3cret"
PRINCIPALS = {
    "admin": ["deployments:read", "notifications:admin"],
    "reader": ["deployments:read"],
    "ci": ["deployments:read", "deployments:write"],
}
EVENT = {
    "product_name": "shop",
    "version": "1.0.0",
    "environment_name": "production",
    "status": "started",
}


class Http:
    def __init__(self, running: RunningServer, tokens: dict[str, str]) -> None:
        self.running = running
        self.tokens = tokens
        self.client = httpx.Client(base_url=running.http_url, timeout=TIMEOUT)

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return self.client.request(method, path, headers=headers, **kw)

    def stored(self) -> list[npb.Subscription]:
        stub = npb_grpc.NotificationServiceStub(self.running.channel)
        answer = stub.ListSubscriptions(
            npb.ListSubscriptionsRequest(),
            metadata=(("authorization", f"Bearer {self.tokens['reader']}"),),
            timeout=TIMEOUT,
        )
        return list(answer.subscriptions)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def http(config, tmp_path) -> Iterator[Http]:
    auth_file = tmp_path / "tokens.toml"
    tokens = {n: create_token(auth_file, n, s) for n, s in PRINCIPALS.items()}
    running = start_server(
        replace(config, allow_private_webhooks=True, notification_timeout=2.0),
        auth_file=str(auth_file),
    )
    api = Http(running, tokens)
    try:
        yield api
    finally:
        api.client.close()
        running.stop()


def loc(response: httpx.Response) -> list[Any]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


def create(http: Http, receiver: Receiver, path: str, **fields: Any) -> dict[str, Any]:
    receiver.secrets[path] = SECRET
    body = {"name": path, "url": receiver.url(path), "secret": SECRET, **fields}
    answer = http.call("admin", "POST", "/subscriptions/", json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_subscription_lifecycle_over_http_and_the_secret_is_never_returned(http, receiver):
    sub = create(http, receiver, "crud", products=["shop"], environment_types=["production"])
    assert sub["format"] == "webhook" and sub["has_secret"] is True and sub["enabled"] is True
    assert sub["products"] == ["shop"] and sub["environment_types"] == ["production"]
    assert "secret" not in sub
    routes.SUBSCRIPTION.model_validate(sub)  # the documented schema, built from the protos
    listed = http.call("reader", "GET", "/subscriptions/")
    assert [s["id"] for s in listed.json()["subscriptions"]] == [sub["id"]]
    assert SECRET not in listed.text
    routes.SUBSCRIPTIONS.model_validate(listed.json())
    shown = http.call("reader", "GET", f"/subscriptions/{sub['id']}")
    assert shown.status_code == 200 and shown.json()["name"] == "crud"
    assert SECRET not in shown.text

    patched = http.call(
        "admin", "PATCH", f"/subscriptions/{sub['id']}", json={"enabled": False, "products": []}
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    # Only the fields named changed: the url, the filters by type and the secret stay.
    assert (body["enabled"], body["products"], body["url"]) == (False, [], sub["url"])
    assert body["environment_types"] == ["production"] and body["has_secret"] is True
    cleared = http.call("admin", "PATCH", f"/subscriptions/{sub['id']}", json={"secret": ""})
    assert cleared.json()["has_secret"] is False
    assert http.stored()[0].has_secret is False

    deleted = http.call("admin", "DELETE", f"/subscriptions/{sub['id']}")
    assert deleted.status_code == 204
    assert http.stored() == []
    assert http.call("admin", "DELETE", f"/subscriptions/{sub['id']}").status_code == 404


def test_events_posted_over_http_are_delivered_and_listed_then_redelivered(http, receiver):
    sub = create(http, receiver, "hook")
    recorded = http.call("ci", "POST", "/deployment-events/", json=EVENT)
    assert recorded.status_code == 200, recorded.text
    (got,) = receiver.wait_for("hook", 1)
    assert got.json["version"] == "1.0.0"
    assert receiver.bad_signatures == []

    def settled() -> list[dict[str, Any]]:
        path = f"/subscriptions/{sub['id']}/deliveries"
        found: list[dict[str, Any]] = http.call("reader", "GET", path).json()["deliveries"]
        return found if found and found[0]["state"] == "succeeded" else []

    # The delivery log is written just after the receiver answers.
    deliveries: list[dict[str, Any]] = wait_until(settled, what="a settled delivery")  # type: ignore[assignment]
    assert [d["id"] for d in deliveries] == [got.delivery]
    assert deliveries[0]["state"] == "succeeded"
    assert deliveries[0]["attempts"][0]["http_status"] == 200
    routes.DELIVERY.model_validate(deliveries[0])
    everywhere = http.call("reader", "GET", "/deliveries/").json()["deliveries"]
    assert [d["id"] for d in everywhere] == [got.delivery]
    again = http.call("admin", "POST", f"/deliveries/{got.delivery}/redeliver")
    assert again.status_code == 201, again.text
    assert again.json()["redelivery_of"] == got.delivery
    routes.DELIVERY_PAGE.model_validate(http.call("reader", "GET", "/deliveries/").json())
    second = receiver.wait_for("hook", 2)[1]
    assert second.delivery == again.json()["id"] and second.json["version"] == "1.0.0"


def test_send_test_delivers_a_ping_and_returns_the_delivery(http, receiver):
    sub = create(http, receiver, "ping")
    sent = http.call("admin", "POST", f"/subscriptions/{sub['id']}/test")
    assert sent.status_code == 200, sent.text
    assert sent.json()["state"] == "succeeded" and sent.json()["event_type"] == "ping"
    (got,) = receiver.on("ping")
    assert got.delivery == sent.json()["id"]


def test_management_needs_notifications_admin_and_reads_need_read(http, receiver):
    body = {"name": "x", "url": receiver.url("x")}
    assert http.call(None, "POST", "/subscriptions/", json=body).status_code == 401
    refused = http.call("ci", "POST", "/subscriptions/", json=body)
    assert refused.status_code == 403 and "notifications:admin" in refused.json()["detail"]
    assert http.stored() == []
    sub = create(http, receiver, "scoped")
    for method, path in (
        ("PATCH", f"/subscriptions/{sub['id']}"),
        ("DELETE", f"/subscriptions/{sub['id']}"),
        ("POST", f"/subscriptions/{sub['id']}/test"),
        ("POST", "/deliveries/some-id/redeliver"),
    ):
        kw = {"json": {"enabled": False}} if method == "PATCH" else {}
        assert http.call("reader", method, path, **kw).status_code == 403, (method, path)
    assert http.call(None, "GET", "/subscriptions/").status_code == 401
    assert http.call(None, "GET", "/deliveries/").status_code == 401
    assert receiver.on("scoped") == []
    assert [s.enabled for s in http.stored()] == [True]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"format": "carrier-pigeon"}, "format"),
        ({"event_types": ["deployment.exploded"]}, "event_types"),
        ({"products": [""]}, "products"),
        ({"secret": "short"}, "secret"),
        ({"name": ""}, "name"),
        ({"environment_types": ["moon"]}, "environment_types"),
        ({"environment_types": "production"}, "environment_types"),
        ({"enabled": "maybe"}, "enabled"),
        ({"cursor_revision": 5}, "cursor_revision"),
        ({"name": None}, "name"),
    ],
)
def test_bad_subscription_input_is_422_naming_the_field_and_writes_nothing(http, changes, field):
    body = {"name": "bad", "url": "https://example.com/hook", **changes}
    locations = loc(http.call("admin", "POST", "/subscriptions/", json=body))
    assert any(str(where[1]).startswith(field) for where in locations), locations
    assert http.stored() == []


def test_bad_patches_are_422_and_change_nothing(http, receiver):
    sub = create(http, receiver, "patch")
    path = f"/subscriptions/{sub['id']}"
    assert loc(http.call("admin", "PATCH", path, json={"url": "gopher://x"}))[0][1] == "url"
    assert loc(http.call("admin", "PATCH", path, json={"id": "other"}))[0] == ["body", "id"]
    assert loc(http.call("admin", "PATCH", path, json={}))[0][1] == "update_mask"
    not_json = http.call("admin", "PATCH", path, content=b"enabled=false")
    assert not_json.status_code == 415
    assert http.stored()[0].url == sub["url"] and http.stored()[0].enabled


def test_unknown_ids_are_404(http):
    assert http.call("reader", "GET", "/subscriptions/nope").status_code == 404
    assert (
        http.call("admin", "PATCH", "/subscriptions/nope", json={"enabled": False}).status_code
        == 404
    )
    assert http.call("admin", "DELETE", "/subscriptions/nope").status_code == 404
    assert http.call("reader", "GET", "/subscriptions/nope/deliveries").status_code == 404
    assert http.call("admin", "POST", "/subscriptions/nope/test").status_code == 404
    assert http.call("admin", "POST", "/deliveries/nope/redeliver").status_code == 404
    assert http.call("reader", "GET", "/deliveries/", params={"cursor": "bad"}).status_code == 422


def test_deliveries_page_with_a_cursor_newest_first(http, receiver):
    sub = create(http, receiver, "pages")
    ids = [
        http.call("admin", "POST", f"/subscriptions/{sub['id']}/test").json()["id"]
        for _ in range(3)
    ]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = http.call("reader", "GET", f"/subscriptions/{sub['id']}/deliveries", params=params)
        seen += [d["id"] for d in page.json()["deliveries"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert loc(http.call("reader", "GET", "/deliveries/", params={"limit": 0}))[0] == [
        "query",
        "limit",
    ]


def test_openapi_documents_the_notification_routes_and_still_validates(http):
    document = http.call(None, "GET", "/openapi.json").json()
    validate(document)
    for path in (
        "/subscriptions/",
        "/subscriptions/{subscription_id}",
        "/subscriptions/{subscription_id}/deliveries",
        "/subscriptions/{subscription_id}/test",
        "/deliveries/",
        "/deliveries/{delivery_id}/redeliver",
    ):
        assert path in document["paths"], path
    assert {"get", "patch", "delete"} <= set(document["paths"]["/subscriptions/{subscription_id}"])
