"""NotificationService: subscriptions and the delivery log, proto ↔ domain.

Thin: rules live in domain.notifications, storage in store.notifications,
sending in notify/. Secrets are sealed here on the way in and never go out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import duration_pb2
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from versioner_grpc import convert, pagetoken
from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import invalid
from versioner_grpc.domain.notifications import (
    Delivery,
    Subscription,
    validate_mask,
    validate_subscription,
)
from versioner_grpc.domain.validation import validate_identifier
from versioner_grpc.notify.engine import NotificationEngine
from versioner_grpc.notify.secrets import SecretBox
from versioner_grpc.notify.ssrf import TargetRefused, check_target
from versioner_grpc.store.notifications import NotificationStore

if TYPE_CHECKING:  # grpc's classes are not subscriptable at runtime
    Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def subscription_message(s: Subscription) -> npb.Subscription:
    f = s.fields
    return npb.Subscription(
        id=s.id,
        name=f.name,
        url=f.url,
        format=cast(npb.NotificationFormat, f.format),
        has_secret=s.has_secret,
        products=list(f.products),
        environments=list(f.environments),
        environment_types=[cast(pb.EnvironmentType, t) for t in f.environment_types],
        event_types=list(f.event_types),
        enabled=f.enabled,
        cursor_revision=s.cursor,
        create_time=convert.timestamp(s.create_time),
        update_time=convert.timestamp(s.update_time),
    )


def delivery_message(d: Delivery) -> npb.Delivery:
    msg = npb.Delivery(
        id=d.id,
        subscription_id=d.subscription_id,
        revision=d.revision,
        event_type=d.event_type,
        state=cast(npb.DeliveryState, d.state),
        create_time=convert.timestamp(d.create_time),
        update_time=convert.timestamp(d.update_time),
        redelivery_of=d.redelivery_of,
        attempts=[
            npb.DeliveryAttempt(
                number=a.number,
                time=convert.timestamp(a.time),
                http_status=a.http_status,
                latency=duration_pb2.Duration(
                    seconds=a.latency_us // 1_000_000, nanos=(a.latency_us % 1_000_000) * 1000
                ),
                error=a.error,
                response_body=a.response_body,
                result=a.result,
            )
            for a in d.attempts
        ],
    )
    if d.state == d.state.PENDING:
        msg.next_attempt_time.CopyFrom(convert.timestamp(d.next_attempt_time))
    return msg


class NotificationService(npb_grpc.NotificationServiceServicer):
    """The versioner.v1.NotificationService servicer."""

    def __init__(
        self,
        notifications: NotificationStore,
        engine: NotificationEngine,
        box: SecretBox,
        *,
        allow_private: bool = False,
    ) -> None:
        self.notifications = notifications
        self.engine = engine
        self.box = box
        self.allow_private = allow_private

    async def _check_url(self, url: str) -> None:
        if self.allow_private:
            return
        try:
            await check_target(url)
        except TargetRefused as exc:
            raise invalid("url", str(exc)) from exc

    async def CreateSubscription(
        self, request: npb.CreateSubscriptionRequest, context: Context
    ) -> npb.CreateSubscriptionResponse:
        fields, secret = validate_subscription(
            name=request.name,
            url=request.url,
            format=request.format,
            secret=request.secret,
            products=list(request.products),
            environments=list(request.environments),
            environment_types=list(request.environment_types),
            event_types=list(request.event_types),
            enabled=request.enabled if request.HasField("enabled") else True,
        )
        await self._check_url(fields.url)
        sub = await self.notifications.create(fields, self.box.seal(secret), now_us())
        self.engine.changed()
        return npb.CreateSubscriptionResponse(subscription=subscription_message(sub))

    async def ListSubscriptions(
        self, request: npb.ListSubscriptionsRequest, context: Context
    ) -> npb.ListSubscriptionsResponse:
        subs = await self.notifications.subscriptions()
        return npb.ListSubscriptionsResponse(subscriptions=[subscription_message(s) for s in subs])

    async def UpdateSubscription(
        self, request: npb.UpdateSubscriptionRequest, context: Context
    ) -> npb.UpdateSubscriptionResponse:
        sid = validate_identifier("id", request.id)
        mask = validate_mask(list(request.update_mask.paths))
        before = (await self.notifications.get(sid)).fields

        values: dict[str, Any] = {
            "name": before.name,
            "url": before.url,
            "format": int(before.format),
            "products": list(before.products),
            "environments": list(before.environments),
            "environment_types": [int(t) for t in before.environment_types],
            "event_types": list(before.event_types),
            "enabled": before.enabled,
        }
        for name in mask:
            if name in values:
                value = getattr(request, name)
                values[name] = value if isinstance(value, str | int | bool) else list(value)
        fields, secret = validate_subscription(
            **values, secret=request.secret if "secret" in mask else ""
        )
        if "url" in mask:
            await self._check_url(fields.url)
        sealed = self.box.seal(secret) if "secret" in mask else None
        sub = await self.notifications.update(sid, fields, sealed, now_us())
        self.engine.changed()
        return npb.UpdateSubscriptionResponse(subscription=subscription_message(sub))

    async def DeleteSubscription(
        self, request: npb.DeleteSubscriptionRequest, context: Context
    ) -> npb.DeleteSubscriptionResponse:
        sid = validate_identifier("id", request.id)
        await self.notifications.delete(sid)
        self.engine.changed()
        return npb.DeleteSubscriptionResponse()

    async def ListDeliveries(
        self, request: npb.ListDeliveriesRequest, context: Context
    ) -> npb.ListDeliveriesResponse:
        if request.page_size < 0:
            raise invalid("page_size", "must not be negative")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        sid = request.subscription_id
        if sid:
            sid = validate_identifier("subscription_id", sid)
        scope = "ListDeliveries:" + sid
        after = pagetoken.decode(scope, request.page_token) if request.page_token else None
        if sid:
            await self.notifications.get(sid)  # NOT_FOUND if unknown
        page, next_key = await self.notifications.deliveries_page(sid, after, limit)
        return npb.ListDeliveriesResponse(
            deliveries=[delivery_message(d) for d in page],
            next_page_token=pagetoken.encode(scope, next_key) if next_key else "",
        )

    async def Redeliver(
        self, request: npb.RedeliverRequest, context: Context
    ) -> npb.RedeliverResponse:
        delivery_id = validate_identifier("delivery_id", request.delivery_id)
        copy = await self.engine.redeliver(delivery_id)
        return npb.RedeliverResponse(delivery=delivery_message(copy))

    async def SendTest(
        self, request: npb.SendTestRequest, context: Context
    ) -> npb.SendTestResponse:
        sid = validate_identifier("subscription_id", request.subscription_id)
        sub = await self.notifications.get(sid)
        delivery = await self.engine.send_test(sub)
        return npb.SendTestResponse(delivery=delivery_message(delivery))
