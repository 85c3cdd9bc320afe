"""The notification routes: /subscriptions/ and /deliveries/ (DESIGN.md sections 7 and 8).

Each route builds the NotificationService request and calls the servicer, so
validation, the SSRF check, secret sealing and the store are the ones gRPC
callers get. `secret` is write-only: the servicer's Subscription message has no
field for it, only `has_secret`. PATCH changes exactly the fields the body
names (they become the update mask).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb

from versioner_grpc.auth import NOTIFY
from versioner_grpc.domain.errors import NotFound, invalid
from versioner_grpc.notification_service import NotificationService
from versioner_grpc.rest.deployments import NO_CONTEXT, require_json
from versioner_grpc.rest.messages import enum_number, model, page, view
from versioner_grpc.rest.routes import ApiRoute

SUBSCRIPTION = model(npb.Subscription.DESCRIPTOR)
SUBSCRIPTIONS = model(npb.ListSubscriptionsResponse.DESCRIPTOR)
DELIVERY = model(npb.Delivery.DESCRIPTOR)
DELIVERY_PAGE = page("DeliveryPage", "deliveries", npb.Delivery.DESCRIPTOR)
SubscriptionId = Annotated[str, Path(description="the subscription's id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str, Query(description="next_cursor of the previous page")]


class SubscriptionFieldsIn(BaseModel):
    """What a subscription is: where to send, how, and which events."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    url: str | None = None
    format: str | None = None
    secret: str | None = None
    products: list[str] | None = None
    environments: list[str] | None = None
    environment_types: list[str] | None = None
    event_types: list[str] | None = None
    enabled: bool | None = None


class SubscriptionIn(SubscriptionFieldsIn):
    """POST /subscriptions/ (format: webhook or slack; secret optional, write-only)."""

    name: str
    url: str
    format: str = "webhook"


def _fields(body: SubscriptionFieldsIn) -> dict[str, Any]:
    """The proto fields the body sets, enum words turned into numbers."""
    values: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            if name != "secret":
                raise invalid(name, "must not be null")
            value = ""  # null secret: remove it, like ""
        if name == "format":
            value = enum_number(npb.NotificationFormat.DESCRIPTOR, "format", value)
        elif name == "environment_types":
            value = [
                enum_number(pb.EnvironmentType.DESCRIPTOR, "environment_types", t) for t in value
            ]
        values[name] = value
    return values


def _subscription(message: npb.Subscription) -> dict[str, Any]:
    return view(message)


def notification_routes(service: NotificationService) -> list[ApiRoute]:
    """The NotificationService calls over HTTP."""

    async def create(body: SubscriptionIn) -> JSONResponse:
        fields = _fields(body)
        fields.setdefault("format", npb.NOTIFICATION_FORMAT_WEBHOOK)
        answer = await service.CreateSubscription(
            npb.CreateSubscriptionRequest(**fields), NO_CONTEXT
        )
        return JSONResponse(_subscription(answer.subscription), status_code=201)

    async def list_subscriptions() -> JSONResponse:
        answer = await service.ListSubscriptions(npb.ListSubscriptionsRequest(), NO_CONTEXT)
        return JSONResponse({"subscriptions": [_subscription(s) for s in answer.subscriptions]})

    async def get_subscription(subscription_id: SubscriptionId) -> JSONResponse:
        answer = await service.ListSubscriptions(npb.ListSubscriptionsRequest(), NO_CONTEXT)
        for s in answer.subscriptions:
            if s.id == subscription_id:
                return JSONResponse(_subscription(s))
        raise NotFound(f"no subscription {subscription_id!r}")

    async def update(subscription_id: SubscriptionId, body: SubscriptionFieldsIn) -> JSONResponse:
        fields = _fields(body)
        request = npb.UpdateSubscriptionRequest(id=subscription_id, **fields)
        request.update_mask.paths.extend(sorted(fields))
        answer = await service.UpdateSubscription(request, NO_CONTEXT)
        return JSONResponse(_subscription(answer.subscription))

    async def delete(subscription_id: SubscriptionId) -> Response:
        await service.DeleteSubscription(
            npb.DeleteSubscriptionRequest(id=subscription_id), NO_CONTEXT
        )
        return Response(status_code=204)

    async def _deliveries(subscription_id: str, limit: int, cursor: str) -> JSONResponse:
        answer = await service.ListDeliveries(
            npb.ListDeliveriesRequest(
                subscription_id=subscription_id, page_size=limit, page_token=cursor
            ),
            NO_CONTEXT,
        )
        return JSONResponse(
            {
                "deliveries": [view(d) for d in answer.deliveries],
                "next_cursor": answer.next_page_token or None,
            }
        )

    async def subscription_deliveries(
        subscription_id: SubscriptionId, limit: Limit = 50, cursor: Cursor = ""
    ) -> JSONResponse:
        return await _deliveries(subscription_id, limit, cursor)

    async def all_deliveries(
        subscription_id: Annotated[str, Query(description="one subscription's; empty = all")] = "",
        limit: Limit = 50,
        cursor: Cursor = "",
    ) -> JSONResponse:
        return await _deliveries(subscription_id, limit, cursor)

    async def redeliver(
        delivery_id: Annotated[str, Path(description="the delivery's id")],
    ) -> JSONResponse:
        answer = await service.Redeliver(npb.RedeliverRequest(delivery_id=delivery_id), NO_CONTEXT)
        return JSONResponse(view(answer.delivery), status_code=201)

    async def send_test(subscription_id: SubscriptionId) -> JSONResponse:
        answer = await service.SendTest(
            npb.SendTestRequest(subscription_id=subscription_id), NO_CONTEXT
        )
        return JSONResponse(view(answer.delivery))

    tags = ("notifications",)
    missing: dict[int | str, dict[str, Any]] = {404: {"description": "no subscription has this id"}}
    one: dict[int | str, dict[str, Any]] = {200: {"model": SUBSCRIPTION}, **missing}
    deliveries: dict[int | str, dict[str, Any]] = {200: {"model": DELIVERY_PAGE}}
    return [
        ApiRoute(
            "POST",
            "/subscriptions/",
            create,
            "Create a subscription (it receives the events recorded after it)",
            rpc=NOTIFY + "CreateSubscription",
            tags=tags,
            responses={201: {"model": SUBSCRIPTION}},
            dependencies=[Depends(require_json)],
        ),
        ApiRoute(
            "GET",
            "/subscriptions/",
            list_subscriptions,
            "Every subscription, oldest first (secrets are never returned)",
            rpc=NOTIFY + "ListSubscriptions",
            tags=tags,
            responses={200: {"model": SUBSCRIPTIONS}},
        ),
        ApiRoute(
            "GET",
            "/subscriptions/{subscription_id}",
            get_subscription,
            "One subscription",
            rpc=NOTIFY + "ListSubscriptions",
            tags=tags,
            responses=one,
        ),
        ApiRoute(
            "PATCH",
            "/subscriptions/{subscription_id}",
            update,
            'Change the fields the body names (secret: "" removes it)',
            rpc=NOTIFY + "UpdateSubscription",
            tags=tags,
            dependencies=[Depends(require_json)],
            responses=one,
        ),
        ApiRoute(
            "DELETE",
            "/subscriptions/{subscription_id}",
            delete,
            "Delete a subscription with its cursor and delivery log",
            rpc=NOTIFY + "DeleteSubscription",
            tags=tags,
            responses={204: {"description": "deleted"}, **missing},
        ),
        ApiRoute(
            "GET",
            "/subscriptions/{subscription_id}/deliveries",
            subscription_deliveries,
            "A subscription's deliveries, newest first, each with its attempts",
            rpc=NOTIFY + "ListDeliveries",
            tags=tags,
            responses={**deliveries, **missing},
        ),
        ApiRoute(
            "POST",
            "/subscriptions/{subscription_id}/test",
            send_test,
            "Send a test message now and return the delivery",
            rpc=NOTIFY + "SendTest",
            tags=tags,
            responses={200: {"model": DELIVERY}, **missing},
        ),
        ApiRoute(
            "GET",
            "/deliveries/",
            all_deliveries,
            "Deliveries of every subscription (or of subscription_id), newest first",
            rpc=NOTIFY + "ListDeliveries",
            tags=tags,
            responses=deliveries,
        ),
        ApiRoute(
            "POST",
            "/deliveries/{delivery_id}/redeliver",
            redeliver,
            "Queue a delivery's event again under a new delivery id",
            rpc=NOTIFY + "Redeliver",
            tags=tags,
            responses={201: {"model": DELIVERY}, 404: {"description": "no delivery has this id"}},
        ),
    ]
