"""Settings: one pydantic-settings class per external system, env prefix ``RFTLOOP_``.

Every variable is documented in the README's Configuration table. A wrong value
fails at load time with a message that names the variable and the fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import TaintPolicy

DEFAULT_CACHE = Path(os.environ.get("RFTLOOP_CACHE", Path.home() / ".cache" / "rftloop"))


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the variable and the fix."""


def _check_host_port_list(value: str, var: str) -> str:
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{var}={value!r}: expected host:port[,host:port...], e.g. 127.0.0.1:9092")
    return value


class KafkaSettings(BaseSettings):
    """The Kafka cluster every component produces to and consumes from."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port list of brokers")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    partitions: int = Field(3, ge=1, description="partitions of the event topics")
    replication_factor: int = Field(1, ge=1, description="replicas of each topic created")
    min_insync_replicas: int | None = Field(
        None, ge=1, description="topics' min.insync.replicas (default: the brokers' setting)"
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        return _check_host_port_list(v, "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS")

    @model_validator(mode="after")
    def _isr(self) -> KafkaSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"RFTLOOP_KAFKA_MIN_INSYNC_REPLICAS={self.min_insync_replicas} is more than "
                f"RFTLOOP_KAFKA_REPLICATION_FACTOR={self.replication_factor}: every acks=all write "
                "would fail; lower it (replication factor - 1 tolerates one broker down)"
            )
        return self

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class RegistrySettings(BaseSettings):
    """The Confluent-compatible schema registry (Apicurio ccompat locally)."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_REGISTRY_", extra="ignore")

    url: str = Field("http://127.0.0.1:8081/apis/ccompat/v7")
    username: str | None = None
    password: SecretStr | None = None
    auto_register: bool = Field(
        False, description="producers register schemas themselves (off in production)"
    )
    timeout_s: float = Field(
        10.0, gt=0, description="per-request HTTP timeout; a stalled registry fails, not hangs"
    )
    max_retries: int = Field(3, ge=0, description="retries on 5xx/network errors, with backoff")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"RFTLOOP_REGISTRY_URL={v!r}: expected http(s)://host:port/path, "
                "e.g. http://127.0.0.1:8081/apis/ccompat/v7"
            )
        return v.rstrip("/")

    def url_with_credentials(self) -> str:
        """The URL with its basic-auth credentials in it (how ClickHouse's AvroConfluent takes them)."""
        if not (self.username and self.password is not None):
            return self.url
        p = urlparse(self.url)
        auth = f"{quote(self.username, safe='')}:{quote(self.password.get_secret_value(), safe='')}@"
        return p._replace(netloc=auth + p.netloc).geturl()

    def client_config(self) -> dict[str, object]:
        """confluent-kafka SchemaRegistryClient settings (key names checked against its source)."""
        conf: dict[str, object] = {
            "url": self.url,
            "timeout": self.timeout_s,
            "max.retries": self.max_retries,
            "retries.wait.ms": 200,
            "retries.max.wait.ms": 2000,
        }
        if self.username and self.password is not None:
            conf["basic.auth.user.info"] = f"{self.username}:{self.password.get_secret_value()}"
        return conf


class ClickHouseSettings(BaseSettings):
    """ClickHouse over HTTP: the embedded chdb server by default, or a real server."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_CLICKHOUSE_", extra="ignore")

    url: str = Field("http://127.0.0.1:8123", description="HTTP interface of ClickHouse")
    database: str = "rftloop"
    username: str = "default"
    password: SecretStr = SecretStr("")
    cluster: str | None = Field(None, description="ON CLUSTER name for replicated DDL")
    ttl_days: dict[str, int] = Field(
        default_factory=dict,
        description='per-table TTL overrides in days, JSON ({"inference_requested": 30}; 0 = keep); '
        "default: each table keeps rows as long as its topic keeps events",
    )
    sink_decode: Literal["clickhouse", "python"] = Field(
        "clickhouse",
        description="who decodes the sink's Avro: ClickHouse (AvroConfluent, from the framed bytes) "
        "or the sink itself (TopicSerde: cavro, fastavro for older writer schemas)",
    )
    avro_registry_url: str | None = Field(
        None,
        description="the schema registry as ClickHouse reaches it, for AvroConfluent "
        "(default: RFTLOOP_REGISTRY_URL, with its credentials)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
            raise ValueError(
                f"RFTLOOP_CLICKHOUSE_URL={v!r}: expected http(s)://host:port, e.g. http://127.0.0.1:8123"
            )
        return v.rstrip("/")

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 8123

    @property
    def secure(self) -> bool:
        return urlparse(self.url).scheme == "https"


class StreamsSettings(BaseSettings):
    """The stream worker: the join and rewards, rolling windows."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_STREAMS_", extra="ignore")

    app_id: str = Field("rftloop-streams", description="consumer group and changelog topic prefix")
    topic_suffix: str = Field("", description="appended to every topic name (isolated test/tenant sets)")
    feedback_horizon_s: float = Field(86_400, gt=0, description="how long a request waits for feedback")
    windows: str = Field(
        "tumbling:10,tumbling:60,hopping:300:60", description="window specs, seconds: KIND:SIZE[:STEP]"
    )
    lateness_s: float = Field(5.0, ge=0, description="a window closes this long after its end")
    session_timeout_s: float | None = Field(
        None,
        ge=6,
        description="a worker that stops heartbeating is out of the group after this "
        "(failover time); unset = faust's 60 s",
    )
    evaluators: str = Field(
        "number_match,json_valid,regex,tool_call", description="registered evaluators to run"
    )
    evaluator_modules: str = Field("", description="comma-separated modules that register evaluators")
    evaluator_timeout_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="longest the evaluators may take on one response (all its choices); past it their "
        "process is replaced and the response dead-lettered naming the evaluators that hung",
    )
    agents: str = Field(
        "evaluate,join,metrics",
        description="what this worker runs: any of join, evaluate (the evaluators), metrics",
    )
    batch_size: int = Field(2000, ge=1, description="events per batch of the join and of stage 1")
    batch_seconds: float = Field(0.2, gt=0, description="longest wait to fill a batch")
    web_port: int = Field(6066, ge=0, le=65535, description="worker HTTP port (open windows); 0 = off")
    data_dir: Path = Field(Path(".rftloop/streams"), description="faust worker state")
    instance_id: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="this worker's stable id across restarts (names its transactional producer); "
        "empty = derived from host name + data dir",
    )
    transaction_timeout_s: float = Field(
        10.0,
        ge=1,
        le=900,
        description="the broker aborts a dead worker's open batch after this; the windows and the "
        "samples wait for it meanwhile (a restarted worker aborts it at once)",
    )

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: str) -> str:
        names = {a.strip() for a in v.split(",") if a.strip()}
        if not names or names - {"join", "evaluate", "metrics"}:
            raise ValueError(
                f"RFTLOOP_STREAMS_AGENTS={v!r}: expected a comma-separated subset of join, evaluate, metrics"
            )
        return ",".join(sorted(names))


class GatewaySettings(BaseSettings):
    """The OpenAI-compatible inference gateway on vLLM."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_GATEWAY_", extra="ignore")

    model: str = Field("smollm2", description="smollm2, tiny, or any HF model path / name")
    served_name: str = Field("smollm2-135m-instruct", description="model id in the API and the events")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: SecretStr = Field(
        SecretStr("rftloop-dev-key"), description="comma-separated accepted API keys; empty = no auth"
    )
    admin_key: SecretStr = Field(SecretStr("rftloop-admin-key"), description="key for promote/rollback")
    request_id_key: SecretStr = Field(
        SecretStr(""),
        description="signs the version into each request id, so any replica attributes feedback "
        "(give every replica the same; empty = derived from RFTLOOP_GATEWAY_API_KEYS)",
    )
    price_prompt_per_1k: float = Field(0.0001, ge=0, description="currency per 1k prompt tokens")
    price_completion_per_1k: float = Field(0.0003, ge=0, description="currency per 1k completion tokens")
    price_engine_second: float = Field(0.0001, ge=0, description="currency per engine-second")
    max_tokens_limit: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_model_len: int = Field(2048, ge=64, description="context length (prompt + completion)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    rate_limit_rps: float = Field(50, ge=0, description="requests per second per API key (0 = no limit)")
    rate_limit_burst: int = Field(100, ge=0, description="requests a key may send at once")
    trusted_keys: SecretStr = Field(
        SecretStr(""),
        description="comma-separated keys that may rate any request and send ground truth "
        "(metadata.reference, metadata.expect_regex): evaluators, labelling tools",
    )
    feedback_rate_limit_rps: float = Field(
        20, ge=0, description="feedback posts per second per key (0 = none)"
    )
    feedback_rate_limit_burst: int = Field(200, ge=0, description="feedback posts a key may send at once")
    otlp_endpoint: str = Field(
        "",
        description="OTLP/HTTP collector base URL (http://host:4318) for GenAI spans and metrics; empty = off",
    )
    otlp_metrics_interval_s: int = Field(10, ge=1, description="OTLP metrics export interval")
    compact_json: bool = Field(
        True,
        description="structured outputs (response_format, forced tools) as compact JSON, no free whitespace "
        "(vLLM xgrammar disable_any_whitespace); small models otherwise pad JSON with whitespace",
    )
    tool_call_parser: str = Field(
        "hermes", description="vLLM tool-call parser for the served model (vllm serve --tool-call-parser)"
    )
    cors_origins: str = Field("", description="comma-separated browser origins allowed; empty = CORS closed")
    event_buffer: int = Field(100_000, ge=100, description="events held while Kafka is unreachable")
    redact: bool = Field(
        True, description="redact personal data and secrets in events (producers/sdk/redaction.py)"
    )
    redact_patterns: str = Field("", description="extra regexes to redact, separated by ;;")
    redact_disabled: str = Field(
        "",
        description="built-in detectors switched off, comma-separated: secret,email,iban,card,ssn,ip,phone",
    )
    redact_phone_regions: str = Field(
        "US",
        description="regions whose national phone numbers are found (comma-separated; +CC numbers always)",
    )
    canary_share: float = Field(0.1, ge=0, le=1, description="traffic share of a newly published version")
    adapter_root: Path = Field(DEFAULT_CACHE / "adapters", description="adapters are loaded only from here")
    max_loras: int = Field(4, ge=1)
    max_lora_rank: int = Field(16, ge=1)
    lora_target_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj",
        description="the only modules the engine applies LoRA to (vllm serve --lora-target-modules; "
        "the trainer's targets); an adapter that targets others is refused. Empty: every module "
        "vLLM supports (each one adds a LoRA call per layer per step, adapter or not)",
    )
    kv_cache_gib: int = Field(1, ge=1, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    topic_suffix: str = Field("", description="appended to every topic name (isolated test sets)")
    instance: str = Field("", description="this replica's name in events and /healthz (default host:port)")

    def lora_targets(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]


class TrainerSettings(BaseSettings):
    """The RFT trainer: what it trains on, how, and the gate a candidate must pass."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_TRAINER_", extra="ignore")

    base_model: str = Field("smollm2", description="smollm2, tiny, or an HF path: the serving base model")
    served_name: str = Field("smollm2-135m-instruct", description="model name in the events")
    method: str = Field(
        "auto",
        description="kto (thumbs / signed rewards), grpo (re-generate and score against references), "
        "dpo (preference pairs), auto (dpo with enough pairs, else grpo when most samples have a "
        "reference, else kto)",
    )
    min_pairs: int = Field(8, ge=1, description="preference pairs (after the hold-out) for DPO")
    grpo_generations: int = Field(4, ge=2, description="GRPO: answers generated per prompt (the group)")
    grpo_prompts: int = Field(2, ge=1, description="GRPO: prompts per step")
    grpo_rollouts: str = Field(
        "vllm", description="GRPO rollouts from the run's vLLM engine (vllm) or TRL's generate (transformers)"
    )
    gateway_url: str = Field(
        "",
        description="gate and sample GRPO rollouts on this gateway's engine (shadow versions, "
        "POST /v1/shadows) instead of starting an engine of the run's own; empty: the run's own",
    )
    gateway_key: SecretStr = Field(
        SecretStr(""), description="a trusted key of that gateway (RFTLOOP_GATEWAY_TRUSTED_KEYS)"
    )
    grpo_screen_prompts: int = Field(
        64,
        ge=0,
        description="GRPO: training prompts screened for reward variance (the first by request hash; "
        "0: no screening)",
    )
    grpo_temperatures: list[float] = Field(
        [0.5, 0.8],
        min_length=1,
        description="rollout temperatures screened before GRPO (JSON list); the one with the most "
        "prompts whose answers differ in reward is used",
    )
    canary_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="traffic share a published version starts on, stated in its ModelVersionPublished "
        "(the gateways route by it, the judge ramps from it); unset: the event names none and each "
        "gateway uses its RFTLOOP_GATEWAY_CANARY_SHARE, which the judge cannot see",
    )
    grpo_length_slack: float = Field(
        0.0,
        ge=0,
        description="GRPO length term: an answer longer than the starting policy's mean answer "
        "(measured in the screening) loses reward, linearly to -grpo_length_weight at (1 + slack) x "
        "that mean (TRL's soft overlong punishment); 0: off",
    )
    grpo_length_weight: float = Field(
        0.5, ge=0, description="GRPO length term: its weight beside correctness (weight 1)"
    )
    min_samples: int = Field(16, ge=2, description="rewarded samples needed for a run")
    min_new_samples: int = Field(
        8, ge=1, description="training samples since the parent's data needed to continue its adapter"
    )
    replay_samples: int = Field(
        32, ge=0, description="older samples replayed beside the new ones when continuing (bounded)"
    )
    holdout_percent: int = Field(
        20, ge=1, le=90, description="share held out for the gate, by request_id hash"
    )
    min_eval_samples: int = Field(4, ge=1, description="held-out samples with a reference needed to gate")
    max_eval_samples: int = Field(
        64, ge=1, description="held-out samples the gate scores (the first by hash)"
    )
    max_steps: int = Field(8, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    continued_lr_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="a run that continues the incumbent's adapter trains at learning_rate x this "
        "(a good adapter has more to lose than a fresh one; 0.5 in two demo runs: continued "
        "generations +2.0, +4.5, +7.9 and +11.3 points, against +9.4 on average for eight at 1.0)",
    )
    continued_max_steps: int | None = Field(
        None,
        ge=1,
        description="steps of a run that continues the incumbent's adapter (None: max_steps). A better "
        "parent leaves fewer rollouts that teach: on a generation-2 adapter (57 % right, 300 fresh "
        "questions, greedy) 12 GRPO steps gained +9.0, +4.0 and +7.3 points over three data seeds, "
        "24 steps +11.3 and +10.7 (2026-12-06)",
    )
    continued_grpo_temperatures: list[float] | None = Field(
        None,
        min_length=1,
        description="rollout temperatures screened by a run that continues the incumbent's adapter "
        "(JSON list; None: grpo_temperatures). The 18 continued runs of the nine make demo runs of "
        "2026-12-06 whose data was kept screened [0.5, 0.8]: all 18 chose 0.8, and 0.5 cost each ~17 s",
    )
    lora_rank: int = Field(16, ge=1)
    beta: float = Field(0.1, gt=0)
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass (TRL's default): memory for time. Off: "
        "a 135M model's activations are small, and on the CPU the recomputed forward cost GRPO "
        "steps time (`rftloop bench trainer` measures both)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="the training step's matmuls: bf16 = mixed precision (torch autocast; the LoRA "
        "weights and optimizer stay fp32, the adapter is saved fp32); auto = bf16 where the hardware "
        "multiplies bf16 natively (a CUDA GPU that supports it; a CPU with avx512_bf16 or amx_bf16), "
        "else fp32. The served model and the gate are not affected (vLLM's dtype)",
    )
    max_new_tokens: int = Field(16, ge=1, description="tokens per answer in the gate's evaluation")
    min_quality_gain: float = Field(
        0.0, description="the paired gain's 95 % lower bound must be above this (0: shown to be better)"
    )
    gate_looks: int = Field(
        2,
        ge=1,
        le=5,
        description="looks of the sequential gate at the held-out set (O'Brien-Fleming boundaries, "
        "one-sided 2.5 % overall): a clear gain stops at the first; 1 = one fixed-size test",
    )
    target_quality_gain: float = Field(
        0.10, gt=0, description="the gain the held-out size is checked against (prompts needed, 80 % power)"
    )
    eval_temperature: float = Field(1.0, ge=0, le=2, description="the gate samples as users are served")
    eval_answers_per_prompt: int = Field(
        4, ge=1, le=16, description="answers per held-out prompt (temperature > 0)"
    )
    max_latency_ratio: float = Field(1.25, gt=0, description="candidate latency / incumbent latency budget")
    max_cost_ratio: float = Field(1.25, gt=0, description="candidate tokens per answer / incumbent budget")
    adapter_root: Path = Field(DEFAULT_CACHE / "adapters", description="where versions are written")
    topic_suffix: str = Field("", description="appended to every topic name (isolated test sets)")
    trigger_new_samples: int = Field(
        64, ge=1, description="`rftloop trainer`: run after this many new samples"
    )
    trigger_interval_s: float = Field(
        3600, gt=0, description="... or this long after the last run (if any new)"
    )
    trigger_reward_floor: float | None = Field(
        None, description="... or when the incumbent's mean reward drops below"
    )
    poll_s: float = Field(30, gt=0, description="how often `rftloop trainer` looks")

    def continued(self) -> TrainerSettings:
        """The settings of a run that continues the incumbent's adapter: learning rate x
        ``continued_lr_scale``, ``continued_max_steps`` steps and ``continued_grpo_temperatures``
        (each when set)."""
        return self.model_copy(
            update={
                "learning_rate": self.learning_rate * self.continued_lr_scale,
                "max_steps": self.continued_max_steps or self.max_steps,
                "grpo_temperatures": self.continued_grpo_temperatures or self.grpo_temperatures,
            }
        )

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in ("kto", "grpo", "dpo", "auto"):
            raise ValueError(f"RFTLOOP_TRAINER_METHOD={v!r}: kto, grpo, dpo or auto")
        return v

    @field_validator("grpo_rollouts")
    @classmethod
    def _rollouts(cls, v: str) -> str:
        if v not in ("vllm", "transformers"):
            raise ValueError(f"RFTLOOP_TRAINER_GRPO_ROLLOUTS={v!r}: vllm or transformers")
        return v

    @model_validator(mode="after")
    def _length_term(self) -> TrainerSettings:
        if self.grpo_length_slack > 0 and (self.grpo_rollouts != "vllm" or not self.grpo_screen_prompts):
            raise ValueError(
                "RFTLOOP_TRAINER_GRPO_LENGTH_SLACK measures the starting policy's answer length in the "
                "screening: it needs RFTLOOP_TRAINER_GRPO_ROLLOUTS=vllm and "
                "RFTLOOP_TRAINER_GRPO_SCREEN_PROMPTS > 0"
            )
        return self


class JudgeSettings(BaseSettings):
    """The canary judge: when a candidate is promoted or rolled back."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_JUDGE_", extra="ignore")

    window_kind: str = Field("tumbling", description="which MetricsWindows to compare")
    window_size_s: int = Field(10, ge=1)
    min_samples: int = Field(30, ge=1, description="rated responses per side before a promotion or a ramp")
    min_rollback_samples: int = Field(
        10, ge=1, description="rated responses per side before a rollback as worse"
    )
    max_samples: int = Field(1000, ge=1, description="candidate rated responses; undecided then -> roll back")
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="one-sided confidence of every decision, valid however often the judge looks "
        "(an equal candidate is promoted with probability at most 1 - confidence)",
    )
    mixture_tau: float = Field(
        0.1, gt=0, le=1, description="the confidence sequence's mixing scale: the effect it detects fastest"
    )
    max_canary_s: float = Field(1800.0, gt=0, description="undecided this long after publishing -> roll back")
    no_traffic_s: float = Field(
        180.0, gt=0, description="no request served this long after publishing -> roll back"
    )
    keep_windows_s: float = Field(
        900.0, gt=0, description="windows kept beyond the oldest live canary's start"
    )
    min_requests: int = Field(20, ge=1, description="requests per side before budgets are checked")
    max_error_rate_increase: float = Field(0.05, ge=0)
    max_latency_ratio: float = Field(1.5, gt=0, description="candidate p95 / incumbent p95 budget")
    max_cost_ratio: float = Field(1.5, gt=0, description="candidate cost per request / incumbent budget")
    gated_margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="a candidate published with the trainer gate's significant held-out gain (its "
        "eval gain_lower > 0) and not shown better live after max_samples is promoted when live "
        "positive feedback is shown not worse than the incumbent's by more than this (one-sided "
        "bound at `confidence`, taken once at max_samples, > -margin); 0: off, it is rolled back like "
        "any unproven candidate",
    )
    ramp_steps: str = Field(
        "0.25,0.5",
        description="traffic shares an undecided candidate is raised to while it holds up (z >= 0), "
        "one step per min_samples rated responses; empty = it keeps its canary share",
    )
    topic_suffix: str = Field("", description="appended to every topic name (isolated test sets)")

    @field_validator("ramp_steps")
    @classmethod
    def _steps(cls, v: str) -> str:
        try:
            steps = [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"RFTLOOP_JUDGE_RAMP_STEPS={v!r}: comma-separated shares, e.g. 0.25,0.5"
            ) from None
        if any(not 0 < x < 1 for x in steps) or steps != sorted(steps):
            raise ValueError(f"RFTLOOP_JUDGE_RAMP_STEPS={v!r}: increasing shares between 0 and 1 (exclusive)")
        return v

    def steps(self) -> list[float]:
        return [float(x) for x in self.ramp_steps.split(",") if x.strip()]


class PrivacySettings(BaseSettings):
    """Erasure (`rftloop forget`, POST /admin/forget): what happens to versions trained on the data."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_PRIVACY_", extra="ignore")

    tainted_policy: TaintPolicy = Field(
        TaintPolicy.retire,
        description="retire: roll back at once every version trained on an erased person's data "
        "(the safe default); retrain: mark them tainted, keep them serving until a version trained "
        "without the data (from their clean ancestor) replaces them",
    )
    topic_suffix: str = Field("", description="appended to every topic name (isolated test sets)")


class LocalStackSettings(BaseSettings):
    """Where `rftloop up` keeps the local services, and which ports they take."""

    model_config = SettingsConfigDict(env_prefix="RFTLOOP_LOCAL_", extra="ignore")

    state_dir: Path = Field(Path(".rftloop"), description="pid files, logs, data")
    cache_dir: Path = Field(DEFAULT_CACHE, description="jars, venvs, converted models")
    kafka_port: int = Field(9092, ge=1, le=65535)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    kafka_brokers: int | None = Field(
        None,
        ge=1,
        le=9,
        description="brokers of the local Kafka (KRaft, each also a controller); broker i listens on "
        "KAFKA_PORT+2(i-1), its controller on KAFKA_CONTROLLER_PORT+2(i-1); default: as the state dir "
        "was created, else 1",
    )
    registry_port: int = Field(8081, ge=1, le=65535)
    clickhouse_port: int = Field(8123, ge=1, le=65535)
    kafka_version: str = "4.1.2"
    apicurio_version: str = "3.3.3"
    java: str = Field("java", description="java executable for Kafka (17+)")
    registry_java: str | None = Field(
        None, description="java executable for Apicurio (21+); default: first JDK 21+ found"
    )
    mvn: str = Field("mvn", description="maven executable, fetches the jars")
    kafka_sasl_password: SecretStr | None = Field(
        None,
        description="when set, the local brokers' client listener is SASL_PLAINTEXT (mechanism PLAIN) "
        "and accepts KAFKA_SASL_USERNAME with this password; clients set RFTLOOP_KAFKA_SECURITY_PROTOCOL"
        "=SASL_PLAINTEXT, _SASL_MECHANISM=PLAIN, _SASL_USERNAME, _SASL_PASSWORD",
    )
    kafka_sasl_username: str = Field("rftloop", pattern=r"^[A-Za-z0-9_.-]+$")
    kafka_heap: str = "512m"
    registry_heap: str = "384m"

    @field_validator("kafka_sasl_password")
    @classmethod
    def _jaas_safe(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and (not v.get_secret_value() or any(c in v.get_secret_value() for c in '"\\\n;')):
            raise ValueError(
                "RFTLOOP_LOCAL_KAFKA_SASL_PASSWORD: must be non-empty without quotes, backslashes, "
                "semicolons or newlines (it goes into the broker's JAAS line)"
            )
        return v

    def kafka_client_security(self) -> dict[str, str]:
        """librdkafka settings a client of the local brokers needs (empty without SASL)."""
        if self.kafka_sasl_password is None:
            return {}
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password.get_secret_value(),
        }

    def require_tool(self, name: str) -> str:
        """Absolute path of java/mvn, or a ConfigError that says which variable to set."""
        exe = getattr(self, name)
        found = shutil.which(exe)
        if not found:
            raise ConfigError(
                f"RFTLOOP_LOCAL_{name.upper()}={exe!r} is not an executable on PATH: install "
                f"{'a JDK 17+' if name == 'java' else 'Apache Maven'} or point the variable at it"
            )
        return found


def load_or_explain(cls: type[BaseSettings]) -> BaseSettings:
    """Instantiate a settings class; turn pydantic's error into a ConfigError for people."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields: its message names the variables
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            var = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{var}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from exc
