"""One interceptor for every call: error mapping, one log line, gRPC metrics.

Domain errors raised anywhere below the service become their gRPC status here
(see errors_grpc); an unexpected exception is logged and becomes INTERNAL with
no internals in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError

from versioner_grpc.auth import TokenFile, principal_name
from versioner_grpc.domain.errors import VersionerError, invalid
from versioner_grpc.domain.validation import MAX_METADATA_DEPTH
from versioner_grpc.errors_grpc import to_status
from versioner_grpc.logs import fields
from versioner_grpc.metrics.grpc_metrics import GrpcMetrics, go_code

log = logging.getLogger("versioner.rpc")
if TYPE_CHECKING:  # grpc's classes are not subscriptable at runtime
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    # On an aio server a handler's behaviour is a coroutine function (unary) or
    # an async generator function (streaming); types-grpcio types them as sync.
    UnaryBehaviour = Callable[[Any, Context], Awaitable[Any]]
    StreamBehaviour = Callable[[Any, Context], AsyncIterator[Any] | Awaitable[Any]]


class _Call:
    """Book-keeping for one RPC: labels, timing, the final code."""

    def __init__(
        self,
        method: str,
        grpc_type: str,
        metrics: GrpcMetrics | None,
        context: Context,
    ) -> None:
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
        self.method = method
        self.labels = (grpc_type, service, name)
        self.metrics = metrics
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        # Read now: asking a cancelled call for its peer later reads freed memory.
        self.peer = context.peer()
        self.principal = ""
        if metrics:
            metrics.started.labels(*self.labels).inc()

    def received(self) -> None:
        if self.metrics:
            self.metrics.received.labels(*self.labels).inc()

    def sent(self) -> None:
        if self.metrics:
            self.metrics.sent.labels(*self.labels).inc()

    async def fail(self, exc: BaseException, context: Context) -> None:
        """Turn `exc` into the call's status (aborting the call)."""
        if isinstance(exc, VersionerError):
            status = to_status(exc)
            self.code = status.code
            await context.abort_with_status(status)
        if isinstance(exc, grpc.aio.AbortError):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        log.exception("unhandled error in %s", self.method, exc_info=exc)
        self.code = grpc.StatusCode.INTERNAL
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def finish(self, context: Context) -> None:
        if self.code == grpc.StatusCode.OK and not context.cancelled():
            self.code = context.code() or grpc.StatusCode.OK
        elapsed = time.perf_counter() - self.start
        if self.metrics:
            self.metrics.handled.labels(*self.labels, go_code(self.code)).inc()
            self.metrics.handling_seconds.labels(*self.labels).observe(elapsed)
        log.info(
            "rpc",
            extra=fields(
                event="rpc",
                method=self.method,
                code=self.code.name,
                duration_ms=round(elapsed * 1000, 3),
                peer=self.peer,
                principal=self.principal,
            ),
        )


class _Held:
    """A stream's claim on its token: revocation ends the stream with that error.

    A stream waiting in its handler (a watcher waiting for events) is cancelled
    there, and the interceptor ends the call with the revocation's status
    instead of CANCELLED; one busy sending sees the error when it resumes.
    """

    def __init__(self, tokens: TokenFile, method: str, context: Context) -> None:
        self.tokens = tokens
        self.ended: VersionerError | None = None
        self.waiting = False  # inside the handler: safe to cancel there
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._stream = tokens.hold(method, context.invocation_metadata() or (), self._end)

    def _end(self, error: VersionerError) -> None:
        def cancel() -> None:
            if self.ended is not None:
                return
            self.ended = error  # raised when the stream next resumes
            if self.waiting and self._task is not None:
                self._task.cancel()

        self._loop.call_soon_threadsafe(cancel)

    def release(self) -> None:
        self.tokens.release(self._stream)


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler; see the module docstring."""

    def __init__(self, metrics: GrpcMetrics | None = None, tokens: TokenFile | None = None) -> None:
        self.metrics = metrics
        self.tokens = tokens

    def _authorize(self, call: _Call, context: Context) -> None:
        """Check the caller before the handler runs; its name goes on events and logs."""
        if self.tokens is None:
            return
        call.principal = self.tokens.authorize(call.method, context.invocation_metadata() or ())
        principal_name.set(call.principal)

    def _hold(self, method: str, context: Context) -> _Held | None:
        """Track an authorized stream so that revoking its token ends it."""
        if self.tokens is None:
            return None
        return _Held(self.tokens, method, context)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        method, metrics, authorize, hold = (
            details.method,
            self.metrics,
            self._authorize,
            self._hold,
        )
        # Requests are parsed inside the wrapper, so bytes that are not a valid
        # message become INVALID_ARGUMENT rather than gRPC's UNKNOWN.
        parse = _parser(handler.request_deserializer)
        kwargs: dict[str, Any] = {
            "request_deserializer": None,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner_uu = cast("UnaryBehaviour", handler.unary_unary)

            async def unary_unary(request: Any, context: Context) -> Any:
                call = _Call(method, "unary", metrics, context)
                call.received()
                try:
                    authorize(call, context)
                    response = await inner_uu(parse(request), context)
                    call.sent()
                    return response
                except BaseException as exc:
                    await call.fail(exc, context)
                finally:
                    call.finish(context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
        if handler.unary_stream or handler.stream_stream:
            streaming = handler.unary_stream is not None
            inner_stream = cast("StreamBehaviour", handler.unary_stream or handler.stream_stream)
            grpc_type = "server_stream" if streaming else "bidi_stream"

            async def stream(request: Any, context: Context) -> Any:
                call = _Call(method, grpc_type, metrics, context)

                async def counted() -> AsyncIterator[Any]:
                    async for message in request:
                        call.received()
                        yield parse(message)

                if streaming:
                    call.received()
                held = None
                responses: AsyncGenerator[Any, None] | None = None
                try:
                    authorize(call, context)
                    held = hold(method, context)
                    arg = parse(request) if streaming else counted()
                    responses = _responses(inner_stream(arg, context))
                    while True:
                        if held is not None:
                            held.waiting = True
                        try:
                            response = await responses.__anext__()
                        except StopAsyncIteration:
                            break
                        finally:
                            if held is not None:
                                held.waiting = False
                        if held is not None and held.ended is not None:
                            raise held.ended
                        call.sent()
                        yield response
                        if held is not None and held.ended is not None:
                            raise held.ended
                except BaseException as exc:
                    ended = held.ended if held is not None else None
                    await call.fail(ended if ended is not None else exc, context)
                finally:
                    if held is not None:
                        held.release()
                    if responses is not None:
                        # Close the handler now (a watcher leaves the hub at once),
                        # not whenever the garbage collector gets to it.
                        with contextlib.suppress(Exception):
                            await responses.aclose()
                    call.finish(context)

            if streaming:
                return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
            return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
        return handler  # client streaming: none in this server


def _parser(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    if deserialize is None:
        return lambda raw: raw

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            if "MaxDepth" in str(exc):  # protobuf's nesting limit, hit by deep extra_metadata
                raise invalid(
                    "extra_metadata",
                    f"must nest at most {MAX_METADATA_DEPTH} levels of objects and lists",
                ) from exc
            raise invalid("request", f"is not a valid message: {exc}") from exc

    return parse


async def _responses(result: Any) -> AsyncGenerator[Any, None]:
    """Iterate a handler's responses, whether it is an async generator or a coroutine."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        value = await result
        if value is not None:
            yield value
