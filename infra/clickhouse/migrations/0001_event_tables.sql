-- 0001: raw event tables, one per topic (generated from schemas/avro by
-- infra/clickhouse/tables.py; tests/unit/test_clickhouse_tables.py keeps them equal).
CREATE TABLE IF NOT EXISTS {database}.inference_requested
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `request_id` Nullable(String),
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `model` String,
    `version` String,
    `adapter` Nullable(String),
    `endpoint` LowCardinality(String),
    `prompt` String,
    `messages` String,
    `max_tokens` Nullable(Int32),
    `temperature` Nullable(Float64),
    `top_p` Nullable(Float64),
    `params` Map(String, String),
    `user_id` Nullable(String),
    `session_id` Nullable(String),
    `training_opt_out` Bool,
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.inference_completed
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `request_id` Nullable(String),
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `model` String,
    `version` String,
    `adapter` Nullable(String),
    `status` LowCardinality(String),
    `error_kind` Nullable(String),
    `error_message` Nullable(String),
    `completion` String,
    `finish_reason` Nullable(String),
    `latency_ms` Float64,
    `ttft_ms` Nullable(Float64),
    `prompt_tokens` Int32,
    `completion_tokens` Int32,
    `tokens_per_s` Nullable(Float64),
    `cost` Decimal(18, 9),
    `engine_seconds` Float64,
    `user_id` Nullable(String),
    `session_id` Nullable(String),
    `training_opt_out` Bool,
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.feedback_submitted
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `request_id` Nullable(String),
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `model` String,
    `version` String,
    `adapter` Nullable(String),
    `kind` LowCardinality(String),
    `value` Nullable(Float64),
    `scale_max` Nullable(Float64),
    `other_request_id` Nullable(String),
    `correction` Nullable(String),
    `comment` Nullable(String),
    `source` LowCardinality(String),
    `evaluator` Nullable(String),
    `user_id` Nullable(String),
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.rewarded_samples
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `request_id` Nullable(String),
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `model` String,
    `version` String,
    `adapter` Nullable(String),
    `prompt` String,
    `messages` String,
    `completion` String,
    `reward` Float64,
    `reward_sources` String,
    `reference` Nullable(String),
    `prompt_tokens` Int32,
    `completion_tokens` Int32,
    `latency_ms` Float64,
    `user_id` Nullable(String),
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.metrics_windows
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `model` String,
    `version` String,
    `adapter` Nullable(String),
    `window_start` DateTime64(3, 'UTC'),
    `window_end` DateTime64(3, 'UTC'),
    `window_size_s` Int32,
    `window_kind` LowCardinality(String),
    `final` Bool,
    `requests` Int64,
    `errors` Int64,
    `error_rate` Float64,
    `latency_p50_ms` Nullable(Float64),
    `latency_p95_ms` Nullable(Float64),
    `latency_p99_ms` Nullable(Float64),
    `ttft_p50_ms` Nullable(Float64),
    `ttft_p95_ms` Nullable(Float64),
    `ttft_p99_ms` Nullable(Float64),
    `tokens_per_s` Nullable(Float64),
    `prompt_tokens` Int64,
    `completion_tokens` Int64,
    `cost_total` Decimal(18, 9),
    `cost_per_request` Nullable(Float64),
    `cost_per_1k_tokens` Nullable(Float64),
    `reward_count` Int64,
    `reward_mean` Nullable(Float64),
    `thumbs_up` Int64,
    `thumbs_down` Int64,
    `thumbs_up_rate` Nullable(Float64),
    `feedback_coverage` Nullable(Float64),
    `latency_sketch` Nullable(String),
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.model_versions
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `kind` LowCardinality(String),
    `model` String,
    `version` String,
    `parent_version` Nullable(String),
    `adapter_uri` Nullable(String),
    `adapter_sha256` Nullable(String),
    `method` Nullable(String),
    `hyperparameters` Map(String, String),
    `lineage` String,
    `eval` Map(String, Float64),
    `traffic_share` Nullable(Float64),
    `decision` String,
    `reasons` Array(String),
    `actor` Nullable(String),
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {database}.training_runs
(
    `event_id` UUID,
    `occurred_at` DateTime64(3, 'UTC'),
    `producer` String,
    `schema_version` Int32,
    `trace_id` Nullable(String),
    `kind` LowCardinality(String),
    `run_id` String,
    `model` String,
    `parent_version` String,
    `method` String,
    `samples` Int64,
    `config` Map(String, String),
    `status` LowCardinality(Nullable(String)),
    `version` Nullable(String),
    `metrics` Map(String, Float64),
    `error` Nullable(String),
    `_topic` LowCardinality(String),
    `_partition` UInt32,
    `_offset` UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;
