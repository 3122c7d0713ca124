"""Follow-ups: "And what about Japan?" only means something with the turn before it.

The session keeps the conversation (edge/session.py: the last turns as chat messages),
the turn builds the model's messages from it (edge/turn.py ``TurnRunner._messages``),
and the answer planner hands the same messages to the local model or, escalated,
to the cloud in ``EscalationRequest.messages``. These tests follow a follow-up down
both paths with real components: a real nats-server, a real cloud worker and the
bundled SmolLM2 behind llama.cpp. (What the 135M model makes of the context is the
benchmark's business, scripts/bench_answers.py, category follow_up.)
"""

from __future__ import annotations

import asyncio

from cloud.backends import BackendPool
from cloud.worker import Worker
from edge.answer import AnswerPlanner
from edge.escalation import EscalationClient
from edge.policy_watcher import PolicySnapshot
from edge.turn import Phrases, TurnRequest, TurnRunner, TurnTimer
from shared import subjects
from shared.chat import ChatClient
from shared.policy import parse_policy
from shared.topology import BackendSpec, EscalationSpec, LlmSpec
from shared.wire import EscalationRequest, decode

HISTORY = [{"role": "user", "content": "What is the capital of France?"},
           {"role": "assistant", "content": "The capital of France is Paris."}]
FOLLOW_UP = "And what about Japan?"


class FixedPolicy:
    """An operator's policy without the KV store: every turn escalates, or none does."""

    def __init__(self, action: str):
        self.snapshot = PolicySnapshot(parse_policy({"rules": [{"name": "all", "action": action}],
                                                     "budget": {"max_share": 1},
                                                     "settings": {"first_token_timeout_ms": 60000}}), 1)

    def current(self) -> PolicySnapshot:
        return self.snapshot


class RecordingChat(ChatClient):
    """The real local model, remembering the messages of each request."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen: list[list[dict]] = []

    async def stream(self, messages, **kw):
        self.seen.append(list(messages))
        async for delta in super().stream(messages, **kw):
            yield delta


def follow_up_turn() -> tuple[TurnRequest, list[dict]]:
    """The follow-up as the session hands it over, and the messages the turn builds for the answer."""
    req = TurnRequest(TurnRequest.new_id(), "s1", "aa:bb:cc", "speech", history=list(HISTORY))
    runner = TurnRunner(asr=None, tts=None, plan_answer=None, system_prompt="Answer briefly.", phrases=Phrases(),
                        history_turns=2)
    return req, runner._messages(req, FOLLOW_UP)


async def answer(planner: AnswerPlanner, req: TurnRequest, messages: list[dict]) -> tuple[str, str]:
    stream = await planner(req, FOLLOW_UP, messages, TurnTimer(0))
    return stream.answered_by, "".join([d async for d in stream.deltas])


async def test_escalated_follow_up_carries_the_previous_turn(nats_hub, nats_connect, llama_server):
    worker_nc = await nats_connect(nats_hub.url)
    pool = BackendPool.from_specs([BackendSpec(name="llama", kind="llamacpp", url=llama_server.base_url,
                                               model=llama_server.alias)])
    await pool.start()
    worker = Worker(worker_nc, "w1", "large", pool, max_inflight=2)
    await worker.start()
    spy = await nats_connect(nats_hub.url)
    requests: asyncio.Queue[EscalationRequest] = asyncio.Queue()

    async def on_request(msg) -> None:
        await requests.put(decode(msg.data, EscalationRequest))

    await spy.subscribe(subjects.escalate("large"), cb=on_request)  # a copy of what the worker receives
    await spy.flush()
    try:
        # Generous time limits: a loaded test machine must not turn the escalation into a local fallback.
        client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site", idle_timeout_s=60)
        llm_spec = LlmSpec(url=llama_server.base_url, model=llama_server.alias, max_tokens=30, temperature=0.0)
        local = RecordingChat(llama_server.base_url, llama_server.alias)
        planner = AnswerPlanner(local, llm_spec, EscalationSpec(deadline_ms=120000), Phrases(), escalation=client,
                                watcher=FixedPolicy("escalate"))
        req, messages = follow_up_turn()
        by, text = await answer(planner, req, messages)
        sent = await asyncio.wait_for(requests.get(), 5)
        assert by == "cloud" and text.strip()
        assert [m["content"] for m in sent.messages] == [
            "Answer briefly.", "What is the capital of France?", "The capital of France is Paris.", FOLLOW_UP]
        assert local.seen == []  # the local model was not asked
    finally:
        await worker.stop(drain_timeout_s=1)
        await pool.stop()


async def test_local_follow_up_carries_the_previous_turn(llama_server):
    llm_spec = LlmSpec(url=llama_server.base_url, model=llama_server.alias, max_tokens=30, temperature=0.0)
    local = RecordingChat(llama_server.base_url, llama_server.alias)
    planner = AnswerPlanner(local, llm_spec, EscalationSpec(), Phrases(), watcher=FixedPolicy("local"))
    req, messages = follow_up_turn()
    by, text = await answer(planner, req, messages)
    assert by == "edge" and text.strip()
    assert local.seen == [messages] and messages[1:3] == HISTORY and messages[-1]["content"] == FOLLOW_UP
    await local.aclose()
