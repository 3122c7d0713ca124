"""Follow-ups: "And what about Japan?" only means something with the turn before it.

The session keeps the conversation (edge/pipeline/conversation.py), the turn builds
the model's messages from its window (``turn_messages``), and the answering stage
hands the same messages to the local model or, escalated, to the cloud in
``EscalationRequest.messages``. These tests follow a follow-up down both paths
with real components: a real nats-server, a real cloud worker and the bundled
SmolLM2 behind llama.cpp. (What the 135M model makes of the context is the
benchmark's business, scripts/bench_answers.py, category follow_up.)
"""

from __future__ import annotations

import asyncio

from cloud.backends import BackendPool
from cloud.worker import Worker
from edge.cloud_link import CloudLink
from edge.escalation import EscalationClient
from edge.pipeline.observers import TurnEvents
from edge.pipeline.turn import TurnStart, turn_messages
from edge.policy_watcher import PolicySnapshot
from edge.stages.answering import Answering
from edge.stages.deciding import Deciding
from edge.stages.understanding import Heard
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


async def answer_follow_up(link: CloudLink, local: ChatClient, llm_spec: LlmSpec, spec: EscalationSpec
                           ) -> tuple[str, str, list[dict]]:
    """The follow-up through the deciding and answering stages, as a turn runs them."""
    start = TurnStart(TurnStart.new_id(), "s1", "aa:bb:cc", "text", text=FOLLOW_UP, history=list(HISTORY))
    answering = Answering(local, llm_spec, spec, link)
    deciding = Deciding(spec, link, answering.probe)
    messages = turn_messages("Answer briefly.", start.history, FOLLOW_UP)
    route = await deciding.run(start, Heard(FOLLOW_UP, "en"), messages, TurnEvents(start.turn_id, []))
    source = answering.source(route, start)
    try:
        text = "".join([d async for d in source.stream()])
    finally:
        await source.aclose()
    return source.answered_by, text, messages


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
        link = CloudLink()
        link.attach(EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site", idle_timeout_s=60),
                    FixedPolicy("escalate"), None)
        llm_spec = LlmSpec(url=llama_server.base_url, model=llama_server.alias, max_tokens=30, temperature=0.0)
        local = RecordingChat(llama_server.base_url, llama_server.alias)
        by, text, _ = await answer_follow_up(link, local, llm_spec, EscalationSpec(deadline_ms=120000))
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
    link = CloudLink()  # no cloud: every turn is the edge's
    by, text, messages = await answer_follow_up(link, local, llm_spec, EscalationSpec())
    assert by == "edge" and text.strip()
    assert local.seen == [messages] and messages[1:3] == HISTORY and messages[-1]["content"] == FOLLOW_UP
    await local.aclose()
