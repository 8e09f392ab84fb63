-- 0004: the trainer's per-step log (TRL's log_history: loss, reward, kl, grad_norm, learning_rate ...),
-- one row per (version, step, metric). Written by the trainer itself after each run, not from Kafka.
CREATE TABLE IF NOT EXISTS {database}.training_steps
(
    `version` String,
    `method` LowCardinality(String),
    `step` UInt32,
    `metric` LowCardinality(String),
    `value` Float64,
    `logged_at` DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(logged_at)
ORDER BY (version, step, metric);
