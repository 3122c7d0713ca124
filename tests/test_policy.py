"""Escalation policy: validation with field paths, each rule kind, budget window, two phases, trace file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.policy import (
    DEFAULT_POLICY,
    Decision,
    PolicyError,
    PolicyState,
    TurnFeatures,
    count_words,
    evaluate,
    load_policy,
    loads_policy,
    mean_logprob,
    parse_policy,
)
from shared.topology import TraceSpec
from shared.turn_trace import TurnTrace, read_trace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def one_rule(match: dict, action: str = "escalate", default: str = "local") -> dict:
    return {"rules": [{"name": "r", "match": match, "action": action}], "default_action": default,
            "budget": {"max_share": 1.0}}


def decide(doc: dict, text: str = "x", **feats) -> Decision:
    return evaluate(TurnFeatures.from_text(text, **feats), PolicyState(), parse_policy(doc))


def errors_of(doc) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy(doc)
    return exc.value.errors


# ---------------------------------------------------------------- validation
def test_good_documents_round_trip():
    for path in ("policy.yaml", "policy-local-only.yaml"):
        p = load_policy(EXAMPLES / path)
        assert loads_policy(p.to_yaml()) == p
        assert loads_policy(p.to_json()) == p
    assert loads_policy(DEFAULT_POLICY.to_yaml()) == DEFAULT_POLICY
    assert parse_policy({}).rules == ()


@pytest.mark.parametrize("doc, expected", [
    ({"rules": [{"name": "a", "action": "local"}, {"name": "b", "action": "local"},
                {"name": "c", "action": "escalate", "match": {"pattern": "why(("}}]},
     "rules[2].match.pattern: invalid regex: missing ), unterminated subpattern"),
    ({"rules": [{"name": "a", "action": "escalte"}]}, "rules[0].action: Input should be 'escalate', 'local' or 'phrase'"),
    ({"rules": [{"name": "a", "action": "local", "match": {"min_word": 3}}]}, "rules[0].match.min_word: unknown field"),
    ({"rules": [{"name": "a", "action": "local", "match": {"min_words": 9, "max_words": 2}}]},
     "rules[0].match: min_words (9) is greater than max_words (2)"),
    ({"rules": [{"name": "a", "action": "local"}, {"name": "a", "action": "local"}]},
     "rules: rule names must be unique, repeated: ['a']"),
    ({"rules": [{"name": "has space", "action": "local"}]}, "rules[0].name: String should match pattern"),
    ({"rules": [{"name": "a", "action": "local", "match": {"keywords": ["ok", " "]}}]},
     "rules[0].match.keywords: keyword 1 is empty"),
    ({"rules": [{"name": "a", "action": "local", "match": {"confidence_below": 0.5}}]},
     "rules[0].match.confidence_below: Input should be less than or equal to 0"),
    ({"budget": {"max_share": 1.5}}, "budget.max_share: Input should be less than or equal to 1"),
    ({"budget": {"window_s": 0}}, "budget.window_s: Input should be greater than 0"),
    ({"settings": {"first_token_timeout_ms": -1}}, "settings.first_token_timeout_ms: Input should be greater than 0"),
    ({"settings": {"model_class": "Large Model"}}, "settings.model_class: String should match pattern"),
    ({"version": 2}, "version: Input should be 1"),
    ({"default_action": "cloud"}, "default_action: Input should be 'escalate' or 'local'"),
    ([1, 2], "<root>: the policy must be a mapping"),
])
def test_bad_field_is_named_by_path(doc, expected):
    errors = errors_of(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(PolicyError) as exc:
        load_policy(EXAMPLES / "policy-invalid.yaml")
    paths = [e.split(":")[0] for e in exc.value.errors]
    assert paths == ["budget.max_share", "rules[0].match.pattern", "rules[1].match.min_word", "rules[1].action"]


def test_unparseable_text_and_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="not valid YAML/JSON"):
        loads_policy("rules: [unclosed")
    with pytest.raises(PolicyError, match="No such file"):
        load_policy(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- rule kinds
def test_keywords_whole_words_and_cjk():
    doc = one_rule({"keywords": ["hi", "thank you", "你好"]}, action="local", default="escalate")
    assert decide(doc, "Hi there").rule == "r"
    assert decide(doc, "well, THANK YOU!").rule == "r"
    assert decide(doc, "这是你好吗").rule == "r"  # CJK: substring, no word boundaries
    d = decide(doc, "this is a test")  # "hi" inside "this" must not match
    assert (d.rule, d.escalate) == ("default", True)


def test_pattern_language_length():
    assert decide(one_rule({"pattern": r"^why\b"}), "Why is the sky blue").escalate
    assert not decide(one_rule({"pattern": r"^why\b"}), "tell me why").escalate
    assert decide(one_rule({"languages": ["zh", "ja"]}), "x", language="zh").escalate
    assert not decide(one_rule({"languages": ["zh"]}), "x", language="en").escalate
    assert decide(one_rule({"min_words": 3}), "one two three").escalate
    assert not decide(one_rule({"min_words": 3}), "one two").escalate
    assert decide(one_rule({"max_words": 2}), "one two").escalate
    assert decide(one_rule({"min_chars": 5, "max_chars": 6}), "abcde").escalate
    assert not decide(one_rule({"min_chars": 5, "max_chars": 6}), "abcdefg").escalate
    assert count_words("你好 世界 hello") == 5 and count_words("what is this?") == 3


def test_tools_load_and_cloud_health():
    assert decide(one_rule({"needs_tools": True}), needs_tools=True).escalate
    assert not decide(one_rule({"needs_tools": True}), needs_tools=False).escalate
    assert decide(one_rule({"min_queue_depth": 4}), queue_depth=4).escalate
    assert not decide(one_rule({"min_queue_depth": 4}), queue_depth=3).escalate
    assert decide(one_rule({"min_active_turns": 2, "max_active_turns": 5}), active_turns=3).escalate
    assert not decide(one_rule({"max_active_turns": 5}), active_turns=6).escalate
    down = one_rule({"cloud_healthy": False}, action="local", default="escalate")
    assert decide(down, cloud_healthy=False).rule == "r"
    assert decide(down, cloud_healthy=True).escalate
    assert decide(one_rule({"local_available": False}), local_available=False).escalate
    assert not decide(one_rule({"local_available": False}), local_available=True).escalate
    assert TurnFeatures.from_dict({"text": "hi", "local_available": False}).local_available is False


def test_local_down_escalates_past_the_budget():
    """With the local model down an escalation the budget refuses would be an apology: the budget yields."""
    policy = parse_policy({"budget": {"max_share": 0.0, "min_turns": 1},
                           "rules": [{"name": "local-down", "match": {"local_available": False},
                                      "action": "escalate"}]})
    state = PolicyState()
    for _ in range(3):
        assert evaluate(TurnFeatures.from_text("hello", local_available=False), state, policy).escalate
    assert not evaluate(TurnFeatures.from_text("hello"), state, policy).escalate


def test_a_rule_outside_the_budget_escalates_past_it_and_still_counts():
    policy = parse_policy({"budget": {"max_share": 0.0, "min_turns": 1}, "rules": [
        {"name": "facts", "match": {"intents": ["knowledge"]}, "action": "escalate", "budgeted": False},
        {"name": "rest", "action": "escalate"}]})
    state = PolicyState()
    for _ in range(3):
        assert evaluate(TurnFeatures.from_text("capital of peru", intent="knowledge"), state, policy, now=0).escalate
    refused = evaluate(TurnFeatures.from_text("tell me a story", intent="reasoning"), state, policy, now=0)
    assert not refused.escalate and refused.budget_limited
    assert state.counts(0, 60) == (4, 3)  # the share the budget sees includes them


def test_conditions_are_anded_and_first_match_wins():
    doc = {"budget": {"max_share": 1}, "rules": [
        {"name": "short-why", "match": {"pattern": "why", "max_words": 3}, "action": "local"},
        {"name": "why", "match": {"pattern": "why"}, "action": "escalate"}]}
    assert decide(doc, "why so").rule == "short-why"
    d = decide(doc, "why is the sky blue", )
    assert (d.rule, d.escalate) == ("why", True)


def test_default_policy_behaviour():
    s = PolicyState()
    ev = lambda text, **kw: evaluate(TurnFeatures.from_text(text, **kw), s)  # noqa: E731
    assert ev("hello there").rule == "greeting" and not ev("hello there").escalate
    assert ev("why is the sky blue").rule == "hard-question"
    assert ev("how does a rocket engine work").escalate
    long_q = "tell me about the history of the roman empire and the reasons for its fall please"
    assert ev(long_q).rule == "long-question"
    d = ev("why is the sky blue", cloud_healthy=False)
    assert (d.rule, d.escalate) == ("cloud-unhealthy", False)
    assert ev("turn on the lights", needs_tools=True).rule == "needs-tools"
    d = ev("hello there", local_available=False)  # the local model is restarting: the cloud answers even this
    assert (d.rule, d.escalate) == ("local-down", True)
    d = ev("hello there", local_available=False, cloud_healthy=False)  # nobody can: local, i.e. the apology
    assert (d.rule, d.escalate) == ("cloud-unhealthy", False)
    assert loads_policy(DEFAULT_POLICY.to_yaml()) == DEFAULT_POLICY  # evaluating leaves the document unchanged


def test_intent_rules_route_knowledge_to_the_cloud_and_keep_the_rest_local():
    s = PolicyState()
    ev = lambda text, **kw: evaluate(TurnFeatures.from_text(text, **kw), s)  # noqa: E731
    for intent in ("knowledge", "reasoning"):
        d = ev("which planet is closest to the sun", intent=intent)
        assert (d.rule, d.escalate, d.phrase) == ("knowledge-to-cloud", True, None)
    # The edge's own strengths stay local, even where the text alone looks hard ("how are" used to escalate).
    assert ev("how are you", intent=None).rule == "hard-question"
    for text, intent in (("how are you", "small_talk"), ("what is 12 times 7", "arithmetic"),
                         ("what day is it", "lookup"), ("dim the screen", "command")):
        d = ev(text, intent=intent)
        assert (d.rule, d.escalate) == ("edge-intents", False), text
    assert ev("hello there", intent="knowledge").rule == "greeting"  # earlier rules still come first


def test_cloud_down_knowledge_gets_the_cached_phrase():
    s = PolicyState()
    d = evaluate(TurnFeatures.from_text("who wrote hamlet", intent="knowledge", cloud_healthy=False), s)
    assert (d.rule, d.escalate, d.phrase) == ("knowledge-offline", False, "Sorry, I can't look that up right now.")
    d = evaluate(TurnFeatures.from_text("how are you", intent="small_talk", cloud_healthy=False), s)
    assert (d.rule, d.escalate, d.phrase) == ("cloud-unhealthy", False, None)
    # Unclassified turns (no router yet) behave as before the intent rules existed.
    d = evaluate(TurnFeatures.from_text("who wrote hamlet", cloud_healthy=False), s)
    assert (d.rule, d.phrase) == ("cloud-unhealthy", None)


def test_phrase_action_and_intents_are_validated():
    doc = {"rules": [{"name": "sorry", "match": {"intents": ["knowledge"]}, "action": "phrase", "phrase": "Sorry."}]}
    policy = parse_policy(doc)
    assert loads_policy(policy.to_yaml()) == policy
    assert "phrase" not in DEFAULT_POLICY.to_dict()["rules"][1]  # only phrase rules carry one
    assert decide(doc, "x", intent="knowledge").phrase == "Sorry."
    assert decide(doc, "x", intent="lookup").rule == "default"
    assert errors_of({"rules": [{"name": "a", "action": "phrase"}]}) == [
        "rules[0]: a rule has a phrase exactly when its action is 'phrase'"]
    assert errors_of({"rules": [{"name": "a", "action": "local", "phrase": "hi"}]}) == [
        "rules[0]: a rule has a phrase exactly when its action is 'phrase'"]
    assert errors_of({"rules": [{"name": "a", "action": "local", "match": {"intents": ["knowlege"]}}]}) == [
        "rules[0].match.intents: unknown intent 'knowlege' (known: small_talk, command, lookup, arithmetic, "
        "knowledge, reasoning)"]


def test_intent_classes_match_the_router_examples():
    import yaml

    from shared.policy import INTENT_CLASSES

    examples = Path(__file__).resolve().parent.parent / "shared" / "data" / "intent_examples.yaml"
    classes = yaml.safe_load(examples.read_text())["classes"]
    assert tuple(classes) == INTENT_CLASSES
    assert all(len(v) >= 15 for v in classes.values())


# ---------------------------------------------------------------- two phases
def test_confidence_rule_is_decided_after_the_first_tokens():
    doc = {"budget": {"max_share": 1}, "rules": [
        {"name": "greet", "match": {"keywords": ["hello"]}, "action": "local"},
        {"name": "unsure", "match": {"confidence_below": -2.0, "max_words": 10}, "action": "escalate"},
        {"name": "long", "match": {"min_words": 5}, "action": "escalate"}]}
    policy = parse_policy(doc)
    state = PolicyState()
    # A rule before the confidence rule decides in phase 1.
    assert evaluate(TurnFeatures.from_text("hello you"), state, policy).rule == "greet"
    # Phase 1 reaches the confidence rule: wait for the local model's first tokens.
    f = TurnFeatures.from_text("what is a quark exactly")
    first = evaluate(f, state, policy, revision=7)
    assert first.needs_confidence and not first.escalate and first.rule == "unsure" and first.revision == 7
    f.local_confidence = -3.1
    assert evaluate(f, state, policy).escalate and evaluate(f, state, policy).rule == "unsure"
    f.local_confidence = -0.4  # confident: the next rule in order decides
    d = evaluate(f, state, policy)
    assert (d.rule, d.escalate, d.needs_confidence) == ("long", True, False)
    # Other conditions of the confidence rule fail: no need to wait.
    d = evaluate(TurnFeatures.from_text("one two three four five six seven eight nine ten eleven"), state, policy)
    assert (d.rule, d.needs_confidence) == ("long", False)


def test_confidence_is_the_mean_logprob_of_the_first_tokens():
    assert mean_logprob([-1.0, -3.0, -100.0], 2) == -2.0
    assert mean_logprob([-0.5], 8) == -0.5
    assert mean_logprob([], 8) is None


def test_pending_decisions_do_not_count_in_the_budget():
    policy = parse_policy({"budget": {"max_share": 0.5, "min_turns": 1},
                           "rules": [{"name": "u", "match": {"confidence_below": -1}, "action": "escalate"}]})
    state = PolicyState()
    for _ in range(5):
        assert evaluate(TurnFeatures.from_text("x"), state, policy, now=0).needs_confidence
    assert state.counts(0, 60) == (0, 0)


# ---------------------------------------------------------------- budget
def test_budget_caps_the_escalated_share_in_a_sliding_window():
    policy = parse_policy({"budget": {"max_share": 0.5, "window_s": 60, "min_turns": 4},
                           "rules": [{"name": "all", "action": "escalate"}]})
    state = PolicyState()
    got = [evaluate(TurnFeatures.from_text("q"), state, policy, now=t) for t in range(10)]
    escalated = [d.escalate for d in got]
    # min_turns=4 allows 2 right away; then at most half of the window's turns.
    assert escalated[:2] == [True, True] and not escalated[2]
    assert sum(escalated) == 5, escalated
    refused = next(d for d in got if not d.escalate)
    assert refused.budget_limited and refused.rule == "all" and refused.reason.startswith("budget:")
    # A minute later the window has slid past them: escalating again.
    assert evaluate(TurnFeatures.from_text("q"), state, policy, now=100).escalate
    assert state.counts(100, 60) == (1, 1)


def test_budget_zero_never_escalates_and_one_always_does():
    for share, expect in ((0.0, False), (1.0, True)):
        policy = parse_policy({"budget": {"max_share": share}, "rules": [{"name": "all", "action": "escalate"}]})
        state = PolicyState()
        assert all(evaluate(TurnFeatures.from_text("q"), state, policy, now=t).escalate is expect for t in range(30))


# ---------------------------------------------------------------- features and trace
def test_features_from_trace_records():
    f = TurnFeatures.from_text("why not", language="en", local_confidence=-1.5, queue_depth=2, intent="reasoning")
    assert TurnFeatures.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert TurnFeatures.from_dict({"text": "a b c"}).word_count == 3
    for bad in ({"text": 3}, {"nope": 1}, {"text": "a", "word_count": "many"}, "str"):
        with pytest.raises(ValueError):
            TurnFeatures.from_dict(bad)


async def test_turn_trace_appends_lines_and_rotates(tmp_path):
    path = tmp_path / "trace" / "turns.jsonl"
    trace = TurnTrace(path, max_bytes=4000, backups=2)
    state = PolicyState()
    for i in range(60):
        f = TurnFeatures.from_text(f"why is number {i} so interesting")
        trace.record(f, evaluate(f, state), "cloud", turn_id=f"t{i}", device_id="dev")
    trace.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["turns.jsonl", "turns.jsonl.1", "turns.jsonl.2"]
    assert all(p.stat().st_size <= 4000 for p in path.parent.iterdir())
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["turn"] == "t59" and last["answered_by"] == "cloud" and last["decision"]["rule"] == "hard-question"
    turns, skipped = read_trace(path)
    assert skipped == 0 and turns[-1][1].text == "why is number 59 so interesting" and turns[-1][0] > 0
    path.write_text(path.read_text() + "not json\n{\"features\": {\"x\": 1}}\n")
    assert read_trace(path)[1] == 2


def test_trace_without_text_keeps_the_other_features(tmp_path):
    path = tmp_path / "turns.jsonl"
    trace = TurnTrace.from_spec(TraceSpec(path=str(path), store_text=False))
    f = TurnFeatures.from_text("why is my secret diary so long", needs_tools=False, local_confidence=-1.0)
    trace.record(f, evaluate(f, PolicyState()), "cloud", turn_id="t1")
    trace.close()
    assert "secret" not in path.read_text()
    [(ts, back)] = read_trace(path)[0]
    assert back.text is None and (back.word_count, back.char_count) == (7, len(f.text))
    assert back.local_confidence == -1.0 and ts is not None
    # rules on lengths still decide such a turn; keyword and pattern rules match none
    by_length = parse_policy(one_rule({"min_words": 5}))
    by_word = parse_policy(one_rule({"keywords": ["why"]}))
    by_chars = parse_policy(one_rule({"min_chars": 20}))
    assert evaluate(back, PolicyState(), by_length).escalate and evaluate(back, PolicyState(), by_chars).escalate
    assert not evaluate(back, PolicyState(), by_word).escalate
    with pytest.raises(ValueError):
        TurnFeatures.from_dict({"language": "en"})  # neither text nor word count: not a turn


def test_trace_rotates_at_max_mb_and_keeps_backups(tmp_path):
    path = tmp_path / "turns.jsonl"
    trace = TurnTrace.from_spec(TraceSpec(path=str(path), max_mb=2000 / (1024 * 1024), backups=1))
    state = PolicyState()
    for i in range(40):
        f = TurnFeatures.from_text(f"hello number {i}")
        trace.record(f, evaluate(f, state), "edge", turn_id=f"t{i}")
    trace.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.jsonl", "turns.jsonl.1"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())


def test_trace_drops_lines_older_than_max_age(tmp_path):
    """Old files are pruned at start; a live file whose first line is half the limit old rotates."""
    path = tmp_path / "turns.jsonl"
    day = 86400
    old = {"ts": time.time() - 10 * day, "features": {"text": "old"}}
    middle = {"ts": time.time() - 2 * day, "features": {"text": "middle"}}
    (tmp_path / "turns.jsonl.2").write_text(json.dumps(old) + "\n")
    (tmp_path / "turns.jsonl.1").write_text(json.dumps(old) + "\n" + json.dumps(middle) + "\n")
    path.write_text(json.dumps(middle) + "\n")
    trace = TurnTrace.from_spec(TraceSpec(path=str(path), max_age_days=3, backups=5))
    f = TurnFeatures.from_text("new")
    trace.record(f, evaluate(f, PolicyState()), "edge")
    trace.close()
    # .2 and the old .1 (first line 10 days old) are gone; the live file (2 days > 3/2) was rotated to .1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.jsonl", "turns.jsonl.1"]
    assert [t.text for _, t in read_trace(tmp_path / "turns.jsonl.1")[0]] == ["middle"]
    assert [t.text for _, t in read_trace(path)[0]] == ["new"]


def test_trace_settings_are_validated():
    assert TraceSpec().store_text and TraceSpec().path == ".cache/turns.jsonl"
    for bad in ({"max_mb": 0}, {"backups": 0}, {"max_age_days": -1}, {"store_text": "sometimes"}):
        with pytest.raises(ValueError):
            TraceSpec(**bad)


def test_the_budget_never_turns_another_language_into_a_local_answer():
    """SmolLM2 cannot answer Mandarin: a Mandarin device's turns all escalate, whatever the share."""
    from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures, evaluate

    state = PolicyState()
    decisions = [evaluate(TurnFeatures.from_text("今天天气怎么样", language="zh", local_language=False), state,
                          DEFAULT_POLICY) for _ in range(20)]
    assert all(d.escalate and not d.budget_limited and d.rule == "other-language" for d in decisions)
