"""An A2A agent built on the official SDK (a2a-sdk), for the A2A end-to-end
test: `agent.py PORT NAME [--streaming] [--rest] SKILL [SKILL...]` serves
an Agent Card at /.well-known/agent-card.json and JSON-RPC at /a2a on
127.0.0.1:PORT. A SKILL is an id, or `id=description` to publish another
description. With --streaming the card says `capabilities.streaming`, and
the agent answers SendStreamingMessage and SubscribeToTask with SSE. With
--rest it serves the HTTP+JSON binding at /rest instead of JSON-RPC, and
its card offers only that. With --sign PEM (a P-256 private key) its card
is signed (ES256, kid "k1", by the SDK's signer) and the public key served
as a JWKS at /jwks.json; with --tamper as well, the card's description is
changed after it was signed.

Each skill answers in text naming the agent (NAME) and the skill, so the
test can tell which replica answered. A message whose text starts with
"ask" makes a task that waits for input (TASK_STATE_INPUT_REQUIRED); the
follow-up on that task completes it, answering with the turn count the
agent holds for the task, which only the agent that owns the task knows. A
message starting with "wait" makes a task that stays working until it is
cancelled. "count N" makes a task that reports N working steps ("NAME: step
i", each its own status update) and then completes ("NAME: counted N");
"big" makes a task whose artifact is 2 MiB of text.
"""

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette

from a2a.helpers import get_message_text, new_text_message, new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role, TaskState


class Executor(AgentExecutor):
    def __init__(self, name):
        self.name = name
        self.turns = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = get_message_text(context.message)
        skill = (context.metadata or {}).get("skill") or dict(context.message.metadata).get("skill", "?")
        task = context.current_task
        if task is None and not text.startswith(("ask", "wait", "count", "big")):
            await event_queue.enqueue_event(
                new_text_message(f"{self.name}/{skill}: {text}", role=Role.ROLE_AGENT,
                                 context_id=context.context_id)
            )
            return
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        turns = self.turns.get(task.id, 0) + 1
        self.turns[task.id] = turns
        if text.startswith("ask"):
            await updater.requires_input(
                updater.new_agent_message([_text(f"{self.name}: say more")])
            )
        elif text.startswith("wait"):
            await updater.start_work()
            await asyncio.Event().wait()
        elif text.startswith("count"):
            steps = int(text.split()[1])
            for step in range(1, steps + 1):
                await updater.update_status(
                    TaskState.TASK_STATE_WORKING,
                    updater.new_agent_message([_text(f"{self.name}: step {step}")]),
                )
            await updater.complete(updater.new_agent_message([_text(f"{self.name}: counted {steps}")]))
        elif text.startswith("big"):
            await updater.start_work()
            await updater.add_artifact([_text("x" * (2 << 20))], name="big")
            await updater.complete()
        else:
            await updater.complete(
                updater.new_agent_message([_text(f"{self.name}: turn {turns}: {text}")])
            )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.cancel(updater.new_agent_message([_text(f"{self.name}: cancelled")]))


def _text(text):
    from a2a.helpers import new_text_part
    return new_text_part(text)


def main():
    port, name, skills = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    signing_key = None
    if "--sign" in skills:
        at = skills.index("--sign")
        signing_key = open(skills[at + 1]).read()
        del skills[at : at + 2]
    streaming, rest, tamper = "--streaming" in skills, "--rest" in skills, "--tamper" in skills
    skills = [s for s in skills if s not in ("--streaming", "--rest", "--tamper")]
    jsonrpc = AgentInterface(url=f"http://127.0.0.1:{port}/a2a", protocol_binding="JSONRPC", protocol_version="1.0")
    http_json = AgentInterface(url=f"http://127.0.0.1:{port}/rest", protocol_binding="HTTP+JSON",
                               protocol_version="1.0")
    card = AgentCard(
        name=name,
        description=f"test agent {name}",
        version="1.0.0",
        supported_interfaces=[http_json if rest else jsonrpc],
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(id=s, name=s, description=d or f"the {s} skill", tags=[s])
            for s, _, d in (spec.partition("=") for spec in skills)
        ],
    )
    extra_routes = []
    if signing_key is not None:
        from a2a.utils.signing import create_agent_card_signer
        from jwt.algorithms import ECAlgorithm
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        card = create_agent_card_signer(signing_key, {"alg": "ES256", "kid": "k1", "typ": "JOSE"})(card)
        public = json.loads(ECAlgorithm.to_jwk(ECAlgorithm(ECAlgorithm.SHA256).prepare_key(signing_key).public_key()))
        public.update({"kid": "k1", "alg": "ES256", "use": "sig"})
        extra_routes.append(Route("/jwks.json", lambda request: JSONResponse({"keys": [public]})))
        if tamper:
            card.description = "changed after it was signed"
    handler = DefaultRequestHandler(
        agent_executor=Executor(name), task_store=InMemoryTaskStore(), agent_card=card
    )
    if rest:
        routes = create_agent_card_routes(card) + create_rest_routes(handler, path_prefix="/rest")
    else:
        routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, "/a2a")
    routes += extra_routes
    app = Starlette(routes=routes)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
