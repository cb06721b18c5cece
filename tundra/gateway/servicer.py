"""The AgentGateway methods: parse, call the gateway hub (and through it one core service), reply.

Every method runs behind the policy interceptor, so :data:`~tundra.gateway.policy.CALLER` holds
the certificate-proven caller. The agent id used for anything is that caller's, never a field of
a message: a Hello naming another agent ends the session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.errors import TundraError
from tundra.gateway.events import event
from tundra.gateway.policy import CALLER, refusal
from tundra.gateway.sessions import LiveSession
from tundra.gateway.status import status_for

if TYPE_CHECKING:
    from tundra.gateway.server import Gateway

#: The agent sends Hello right after opening the stream; a silent stream is not kept.
HELLO_SECONDS = 10.0

Context = grpc.aio.ServicerContext[Any, Any]


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Session(self, request_iterator: Any, context: Context) -> None:
        caller = CALLER.get()
        try:
            first = await asyncio.wait_for(context.read(), HELLO_SECONDS)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello")
        if first is grpc.aio.EOF:
            return
        assert isinstance(first, agent_pb2.AgentMessage)
        if first.WhichOneof("kind") != "hello":
            await self._gateway.policy.refuse(
                context,
                refusal("hello-missing", "the first message must be Hello"),
                agent_id=caller.agent_id,
                source=caller.address,
                method=caller.method,
            )
        if first.hello.agent_id != caller.agent_id:
            await self._gateway.policy.refuse(
                context,
                refusal("identity-mismatch", "Hello names another agent than the certificate"),
                agent_id=caller.agent_id,
                source=caller.address,
                method=caller.method,
            )
        try:
            session, welcome = await self._gateway.open_session(caller, first.hello)
        except TundraError as exc:
            await context.abort(status_for(exc), exc.message)
        try:
            await context.write(agent_pb2.ControlMessage(welcome=welcome))
            reader = asyncio.create_task(self._read(session, context))
            writer = asyncio.create_task(self._write(session, context))
            closed = asyncio.create_task(session.closed.wait())
            tasks = (reader, writer, closed)
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._gateway.session_ended(session)
        closing = session.closing
        if closing is not None and closing.code is not None:
            await context.abort(closing.code, closing.reason)

    async def _read(self, session: LiveSession, context: Context) -> None:
        gateway = self._gateway
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    session.close(None, "the agent ended the session")
                    return
                assert isinstance(message, agent_pb2.AgentMessage)
                gateway.heard(session)
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    ack = agent_pb2.HeartbeatAck(sequence=message.heartbeat.sequence)
                    session.send(agent_pb2.ControlMessage(heartbeat_ack=ack))
                elif kind == "result":
                    await gateway.result(session, message.result)
                elif kind == "hello":
                    session.close(grpc.StatusCode.FAILED_PRECONDITION, "Hello is sent once")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            event("session.read-error", agent_id=session.agent_id, error=repr(exc))
            session.close(None, "reading from the agent failed")

    async def _write(self, session: LiveSession, context: Context) -> None:
        try:
            while True:
                await context.write(await session.outbox.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            event("session.write-error", agent_id=session.agent_id, error=repr(exc))
            session.close(None, "writing to the agent failed")

    async def Renew(
        self, request: agent_pb2.RenewRequest, context: Context
    ) -> agent_pb2.RenewResponse:
        caller = CALLER.get()
        try:
            certificate, bundle = await self._gateway.pool(
                self._gateway.services.agents.renew,
                caller.agent_id,
                caller.certificate.serial,
                request.csr_pem,
                source_address=caller.address,
                request_id=caller.request_id,
            )
        except TundraError as exc:
            event(
                "gateway.renew-refused",
                agent_id=caller.agent_id,
                error=exc.message,
                request_id=caller.request_id,
            )
            await context.abort(status_for(exc), exc.message)
        event("gateway.renewed", agent_id=caller.agent_id, request_id=caller.request_id)
        return agent_pb2.RenewResponse(certificate_pem=certificate, ca_bundle_pem=bundle)
