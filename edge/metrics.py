"""Prometheus metrics of an edge node; names are what dashboards and alert rules use.

Defined in one place so that every module (and ansible's alert rules) agrees on them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

CONNECTED_DEVICES = Gauge("xz_edge_connected_devices", "Devices with an open WebSocket session")
ACTIVE_TURNS = Gauge("xz_edge_active_turns", "Turns being answered right now")
TURNS = Counter("xz_edge_turns_total", "Finished turns", ["answered_by", "outcome"])
STAGE_LATENCY = Histogram(
    "xz_edge_stage_latency_seconds",
    "Latency of each pipeline stage (vad_end_of_speech, asr, llm_first_token, tts_first_audio, first_audio)",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
ERRORS = Counter("xz_edge_errors_total", "Errors by kind", ["kind"])
PROTOCOL_ERRORS = Counter("xz_edge_protocol_errors_total", "Bad device input by kind", ["kind"])
ESCALATIONS = Counter("xz_edge_escalations_total", "Turns sent to the cloud, by rule that fired", ["reason"])
ANSWERS_CAPPED = Counter("xz_edge_answers_capped_total",
                         "Model answers ended at their sentence limit (edge.llm / edge.escalation max_sentences)",
                         ["answered_by"])
EARLY_END_OF_TURN = Counter("xz_edge_early_end_of_turn_total",
                            "Pauses judged by their speculative text: turns ended early (complete), "
                            "silence windows grown (unfinished)", ["verdict"])
CLOUD_FALLBACKS = Counter("xz_edge_cloud_fallbacks_total", "Escalated turns answered locally after all", ["cause"])
CACHE_LOOKUPS = Counter("xz_edge_cache_lookups_total", "Cache lookups", ["cache", "result"])
MODEL_LOADED = Gauge("xz_edge_model_loaded", "1 once a model is loaded", ["stage", "model"])
AUDIO_FRAMES_OUT = Counter("xz_edge_audio_frames_out_total", "Opus frames sent to devices")
ESCALATION_FIRST_TOKEN = Histogram(
    "xz_edge_escalation_first_token_seconds", "Escalation sent to first cloud text", buckets=_LATENCY_BUCKETS
)
CLOUD_LINK_UP = Gauge("xz_edge_cloud_link_up", "1 while the edge's NATS link reaches cloud workers")
POLICY_REVISION = Gauge("xz_edge_policy_revision", "Revision of the escalation policy in force")
TOOL_CALLS = Counter("xz_edge_tool_calls_total", "Tool calls by tool kind (server, device) and outcome",
                     ["kind", "outcome"])
TOOL_LATENCY = Histogram("xz_edge_tool_latency_seconds", "Time to run one tool call", ["kind"],
                         buckets=_LATENCY_BUCKETS)
ADMISSION = Counter("xz_edge_admission_total",
                    "Admission decisions: admit, escalate (for load), busy (shed), redirected_device (OTA)",
                    ["verdict"])
SHED_TURNS = Counter("xz_edge_shed_turns_total",
                     "Turns answered with the busy phrase because the edge was full, by the limit that refused",
                     ["limit"])
LOAD_ESCALATIONS = Counter("xz_edge_load_escalations_total",
                           "Turns sent to the cloud while the edge was past its admission limits")
# Queue wait vs compute per stage (vad, asr, llm, tts): the load benchmark's waterfall.
STAGE_QUEUE_WAIT = Histogram("xz_edge_stage_queue_wait_seconds", "Time a stage's job waited before running",
                             ["stage"], buckets=_LATENCY_BUCKETS)
STAGE_COMPUTE = Histogram("xz_edge_stage_compute_seconds", "Time a stage's job (or batch) ran", ["stage"],
                          buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("xz_edge_batch_size", "Jobs per model call", ["stage"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
LOOP_LAG = Histogram("xz_edge_event_loop_lag_seconds",
                     "How late the event loop ran a timer (anything blocking it delays /health and every session)",
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
ASR_PREFETCH_SKIPPED = Counter("xz_edge_asr_prefetch_skipped_total",
                               "Speculative transcriptions not started because the ASR queue was deep")
ANSWER_CHECKS = Counter("xz_edge_answer_checks_total",
                        "Local answers that failed the output check (shared.answer_check): trimmed or replaced",
                        ["problem", "action"])
