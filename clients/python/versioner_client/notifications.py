"""Client methods for NotificationService: subscriptions, deliveries, tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

T = TypeVar("T")
FORMATS = {"webhook": npb.NOTIFICATION_FORMAT_WEBHOOK, "slack": npb.NOTIFICATION_FORMAT_SLACK}
ENVIRONMENT_TYPES = {
    "production": pb.ENVIRONMENT_TYPE_PRODUCTION,
    "staging": pb.ENVIRONMENT_TYPE_STAGING,
    "test": pb.ENVIRONMENT_TYPE_TEST,
    "development": pb.ENVIRONMENT_TYPE_DEVELOPMENT,
    "unspecified": pb.ENVIRONMENT_TYPE_UNSPECIFIED,
}
_LISTS = ("products", "environments", "environment_types", "event_types")


def format_value(value: str | int) -> int:
    """A NotificationFormat from "webhook"/"slack" (or the enum number)."""
    if isinstance(value, int):
        return value
    try:
        return FORMATS[value.lower()]
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {value!r}") from None


def environment_type_value(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return ENVIRONMENT_TYPES[value.lower()]
    except KeyError:
        raise ValueError(
            f"environment type must be one of {', '.join(ENVIRONMENT_TYPES)}, not {value!r}"
        ) from None


class NotificationClient:
    """`VersionerClient(...).notifications`: the same channel, token and retries."""

    def __init__(
        self, channel: grpc.Channel, unary: Callable[[Callable[..., Any], Message], Any]
    ) -> None:
        self._stub = npb_grpc.NotificationServiceStub(channel)
        self._unary = unary

    def create_subscription(
        self,
        name: str,
        url: str,
        *,
        format: str | int = "webhook",
        secret: str = "",
        products: Iterable[str] = (),
        environments: Iterable[str] = (),
        environment_types: Iterable[str | int] = (),
        event_types: Iterable[str] = (),
        enabled: bool = True,
    ) -> npb.Subscription:
        request = npb.CreateSubscriptionRequest(
            name=name,
            url=url,
            format=cast(npb.NotificationFormat, format_value(format)),
            secret=secret,
            products=list(products),
            environments=list(environments),
            environment_types=[
                cast(pb.EnvironmentType, environment_type_value(t)) for t in environment_types
            ],
            event_types=list(event_types),
            enabled=enabled,
        )
        response: npb.CreateSubscriptionResponse = self._unary(
            self._stub.CreateSubscription, request
        )
        return response.subscription

    def list_subscriptions(self) -> list[npb.Subscription]:
        response: npb.ListSubscriptionsResponse = self._unary(
            self._stub.ListSubscriptions, npb.ListSubscriptionsRequest()
        )
        return list(response.subscriptions)

    def update_subscription(self, subscription_id: str, **changes: Any) -> npb.Subscription:
        """Change only the fields given, e.g. `update_subscription(id, enabled=False)`.

        A list given as () empties that filter (match everything); secret="" removes it.
        """
        values = dict(changes)
        if "format" in values:
            values["format"] = format_value(values["format"])
        if "environment_types" in values:
            values["environment_types"] = [
                environment_type_value(t) for t in values["environment_types"]
            ]
        for name in _LISTS:
            if name in values:
                values[name] = list(values[name])
        request = npb.UpdateSubscriptionRequest(
            id=subscription_id,
            update_mask=field_mask_pb2.FieldMask(paths=sorted(changes)),
            **values,
        )
        response: npb.UpdateSubscriptionResponse = self._unary(
            self._stub.UpdateSubscription, request
        )
        return response.subscription

    def delete_subscription(self, subscription_id: str) -> None:
        self._unary(
            self._stub.DeleteSubscription, npb.DeleteSubscriptionRequest(id=subscription_id)
        )

    def deliveries(
        self, subscription_id: str = "", *, page_size: int = 100
    ) -> Iterator[npb.Delivery]:
        """Every delivery (of one subscription, or all), newest first, page by page."""
        token = ""
        while True:
            request = npb.ListDeliveriesRequest(
                subscription_id=subscription_id, page_size=page_size, page_token=token
            )
            page: npb.ListDeliveriesResponse = self._unary(self._stub.ListDeliveries, request)
            yield from page.deliveries
            token = page.next_page_token
            if not token:
                return

    def redeliver(self, delivery_id: str) -> npb.Delivery:
        response: npb.RedeliverResponse = self._unary(
            self._stub.Redeliver, npb.RedeliverRequest(delivery_id=delivery_id)
        )
        return response.delivery

    def send_test(self, subscription_id: str) -> npb.Delivery:
        response: npb.SendTestResponse = self._unary(
            self._stub.SendTest, npb.SendTestRequest(subscription_id=subscription_id)
        )
        return response.delivery


def resolve_subscription(subscriptions: Sequence[npb.Subscription], key: str) -> npb.Subscription:
    """The subscription whose id or name is `key`."""
    for sub in subscriptions:
        if key in (sub.id, sub.name):
            return sub
    raise LookupError(f"no subscription with id or name {key!r}")
