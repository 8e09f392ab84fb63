-- 0002: views for the monitoring questions. Each reads deduplicated data (FINAL),
-- so replays and at-least-once delivery never inflate a figure.

-- Per model, version and minute: traffic, errors, latency and TTFT percentiles, speed, cost.
CREATE VIEW IF NOT EXISTS {database}.version_minutes AS
SELECT
    model,
    version,
    toStartOfMinute(occurred_at) AS minute,
    count() AS requests,
    countIf(status = 'error') AS errors,
    errors / requests AS error_rate,
    quantilesIf(0.5, 0.95, 0.99)(latency_ms, status = 'ok') AS latency_ms_p50_p95_p99,
    quantilesIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL) AS ttft_ms_p50_p95_p99,
    avgIf(assumeNotNull(tokens_per_s), tokens_per_s IS NOT NULL) AS tokens_per_s,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cost) AS cost
FROM {database}.inference_completed FINAL
GROUP BY model, version, minute;

-- The latest RewardedSample of each request (a sample is re-issued when feedback grows).
CREATE VIEW IF NOT EXISTS {database}.latest_samples AS
SELECT
    request_id,
    argMax(model, occurred_at) AS model,
    argMax(version, occurred_at) AS version,
    argMax(prompt, occurred_at) AS prompt,
    argMax(completion, occurred_at) AS completion,
    argMax(reward, occurred_at) AS reward,
    argMax(reward_sources, occurred_at) AS reward_sources,
    argMax(reference, occurred_at) AS reference,
    max(occurred_at) AS rewarded_at
FROM {database}.rewarded_samples FINAL
GROUP BY request_id;

-- The current state of every model version: its last event (published, promoted, rolled back...).
CREATE VIEW IF NOT EXISTS {database}.version_state AS
SELECT
    model,
    version,
    argMax(kind, occurred_at) AS state,
    argMax(decision, occurred_at) AS decision,
    argMax(reasons, occurred_at) AS reasons,
    argMax(traffic_share, occurred_at) AS traffic_share,
    argMaxIf(parent_version, occurred_at, kind = 'published') AS parent_version,
    argMaxIf(method, occurred_at, kind = 'published') AS method,
    argMaxIf(eval, occurred_at, kind = 'published') AS eval,
    minIf(occurred_at, kind = 'published') AS published_at,
    max(occurred_at) AS updated_at
FROM {database}.model_versions FINAL
GROUP BY model, version;

-- Closed windows as the stream processors emitted them.
CREATE VIEW IF NOT EXISTS {database}.windows_final AS
SELECT * EXCEPT (latency_sketch)
FROM {database}.metrics_windows FINAL
WHERE final
