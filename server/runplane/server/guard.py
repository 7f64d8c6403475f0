"""The call guard: the one interceptor every call passes before any handler sees it.

For each call, in order: authenticate (UNAUTHENTICATED, nothing of the request read),
the caller's rate (RATE_LIMITED), the role the method needs somewhere (PERMISSION_DENIED),
its open watches (TOO_MANY_WATCHES); then the handler runs with the principal set for
`identity.caller()`, and a call that changes runs gets its audit line.

Health is exempt (probes carry no credentials); reflection and any other service need
a valid credential and nothing more. What applies to a method is decided once, when
grpc first resolves it: the guarded handler is built then and reused for every call.
Streams are guarded by an async generator passing the handler's messages on, so an
interceptor outside the guard (telemetry) still sees each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_health.v1 import health

from runplane.server import audit, identity, policy, status
from runplane.server.errors import CredentialsInvalid, PermissionDenied, RunplaneError
from runplane.server.identity import Authenticator
from runplane.server.limits import RateLimiter, WatchCounter
from runplane.server.policy import Principal, Role, Rule
from runplane.v1 import run_service_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs

if TYPE_CHECKING:
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor

RUN_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
_UNRULED = Rule(Role.ADMIN)
"""A RunService method missing from the roles table: only admins, until it is added."""


class CallGuard(Interceptor):
    def __init__(
        self,
        authenticator: Authenticator | None,
        watches: WatchCounter,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._watches = watches
        self._limiter = limiter
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is None or known[0] is not handler:
            known = self._guarded[method] = (handler, self._guard(method, handler))
        return known[1]

    def _guard(self, method: str, handler: Handler) -> Handler:
        service, _, name = method.strip("/").partition("/")
        if service == health.SERVICE_NAME:
            return handler
        rule = policy.RULES.get(name, _UNRULED) if service == RUN_SERVICE else None
        if not handler.response_streaming:
            if handler.request_streaming:  # none is served; guard it all the same
                return grpc.stream_unary_rpc_method_handler(
                    self._unary(name, rule, handler.stream_unary),
                    handler.request_deserializer,
                    handler.response_serializer,
                )
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, rule, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(rule, handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            self._stream(rule, handler.unary_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _unary(self, method: str, rule: Rule | None, behavior: Any) -> Any:
        audited = rule is not None and rule.mutating

        async def guarded(request: Any, context: Context) -> Any:
            try:
                principal = self._authenticate(context)
            except RunplaneError as error:
                if audited:
                    audit.record(method, status.from_error(error).code, None)
                return await _abort(context, error)
            try:
                self._admit(principal, rule, request)
            except RunplaneError as error:
                if audited:
                    audit.record(method, status.from_error(error).code, principal.name, request)
                return await _abort(context, error)
            identity.calling.set(principal)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                if audited:
                    audit.record(method, _ended(context, error), principal.name, request)
                raise
            if audited:
                audit.record(method, grpc.StatusCode.OK, principal.name, request, response)
            return response

        return guarded

    def _stream(self, rule: Rule | None, behavior: Any) -> Any:
        watch = rule is not None and rule.watch
        writes = not inspect.isasyncgenfunction(behavior)  # a handler using context.write

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                principal = self._authenticate(context)
                self._admit(principal, rule, request)
                if watch:
                    self._watches.open(principal.name)
            except RunplaneError as error:
                await _abort(context, error)
                return
            identity.calling.set(principal)
            try:
                if writes:
                    await behavior(request, context)
                    return
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                if watch:
                    self._watches.close(principal.name)

        return guarded

    def _authenticate(self, context: Context) -> Principal:
        if self._authenticator is None:
            return policy.ANONYMOUS
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                if authorization is not None:
                    raise CredentialsInvalid("more than one authorization metadata entry")
                authorization = str(value)
        return self._authenticator.authenticate(
            authorization, lambda: identity.certificate_names(context.auth_context())
        )

    def _admit(self, principal: Principal, rule: Rule | None, request: Any) -> None:
        if self._limiter is not None:
            self._limiter.take(principal.name)
        if rule is not None:
            role = rule.role_needed(request)
            if not principal.namespaces(role):
                raise PermissionDenied(principal.name, role.value)


async def _abort(context: Context, error: RunplaneError) -> Any:
    rich = status.from_error(error)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
    raise AssertionError("ServicerContext.abort returns by raising")


def _ended(context: Context, error: BaseException) -> grpc.StatusCode:
    """The code a call that raised `error` ends with."""
    if isinstance(error, grpc.aio.AbortError):
        return context.code()
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
