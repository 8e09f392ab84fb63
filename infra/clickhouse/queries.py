"""The monitoring queries behind `rftloop metrics`, the JSON endpoint and the dashboard.

All read deduplicated rows (FINAL) and take parameters server-side
(``{name:Type}``), so the same SQL runs in the README, in clickhouse-client and here.
"""

from __future__ import annotations

import re
from typing import Any

from clickhouse_connect.driver.client import Client

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadDuration(ValueError):
    """A --since value that is not N[s|m|h|d]."""


def parse_duration(text: str) -> int:
    """``15m`` -> 900 seconds."""
    found = _DURATION.match(text.strip().lower())
    if not found:
        raise BadDuration(f"{text!r}: expected a duration like 90s, 15m, 2h or 7d")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


VERSION_METRICS = """
WITH
  completed AS (
    SELECT model, version,
           count() AS requests,
           countIf(status = 'error') AS errors,
           quantilesIf(0.5, 0.95, 0.99)(latency_ms, status = 'ok') AS lat,
           quantilesIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL) AS ttft,
           avgIf(assumeNotNull(tokens_per_s), tokens_per_s IS NOT NULL) AS tokens_per_s,
           sum(prompt_tokens + completion_tokens) AS tokens,
           sum(cost) AS cost
    FROM {db}.inference_completed FINAL
    WHERE occurred_at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({model:String} = '' OR model = {model:String})
    GROUP BY model, version),
  feedback AS (
    SELECT model, version,
           countIf(kind = 'thumbs' AND value > 0) AS thumbs_up,
           countIf(kind = 'thumbs' AND value <= 0) AS thumbs_down,
           uniqExactIf(request_id, source = 'user') AS with_feedback
    FROM {db}.feedback_submitted FINAL
    WHERE occurred_at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({model:String} = '' OR model = {model:String})
    GROUP BY model, version),
  samples AS (
    SELECT model, version, count() AS rewarded, avg(reward) AS reward_mean
    FROM {db}.latest_samples
    WHERE rewarded_at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({model:String} = '' OR model = {model:String})
    GROUP BY model, version)
SELECT c.model AS model, c.version AS version, c.requests AS requests, c.errors AS errors,
       c.errors / c.requests AS error_rate,
       c.lat[1] AS latency_p50_ms, c.lat[2] AS latency_p95_ms, c.lat[3] AS latency_p99_ms,
       c.ttft[1] AS ttft_p50_ms, c.ttft[2] AS ttft_p95_ms,
       c.tokens_per_s AS tokens_per_s,
       toFloat64(c.cost) AS cost, toFloat64(c.cost) / c.requests AS cost_per_request,
       if(c.tokens > 0, toFloat64(c.cost) * 1000 / c.tokens, NULL) AS cost_per_1k_tokens,
       s.rewarded AS rewarded, if(s.rewarded > 0, s.reward_mean, NULL) AS reward_mean,
       f.thumbs_up AS thumbs_up, f.thumbs_down AS thumbs_down,
       if(f.thumbs_up + f.thumbs_down > 0, f.thumbs_up / (f.thumbs_up + f.thumbs_down), NULL) AS thumbs_up_rate,
       f.with_feedback / c.requests AS feedback_coverage
FROM completed AS c
LEFT JOIN feedback AS f ON f.model = c.model AND f.version = c.version
LEFT JOIN samples AS s ON s.model = c.model AND s.version = c.version
ORDER BY model, version
SETTINGS join_use_nulls = 1
"""

VERSION_SERIES = """
SELECT model, version,
       toStartOfInterval(occurred_at, toIntervalSecond({step:UInt32})) AS t,
       count() AS requests,
       countIf(status = 'error') / count() AS error_rate,
       quantileIf(0.5)(latency_ms, status = 'ok') AS latency_p50_ms,
       quantileIf(0.95)(latency_ms, status = 'ok') AS latency_p95_ms,
       quantileIf(0.5)(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL) AS ttft_p50_ms,
       toFloat64(sum(cost)) / count() AS cost_per_request
FROM {db}.inference_completed FINAL
WHERE occurred_at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({model:String} = '' OR model = {model:String})
GROUP BY model, version, t
ORDER BY t, model, version
"""

REWARD_SERIES = """
SELECT model, version,
       toStartOfInterval(rewarded_at, toIntervalSecond({step:UInt32})) AS t,
       count() AS rewarded, avg(reward) AS reward_mean
FROM {db}.latest_samples
WHERE rewarded_at >= now64(3) - toIntervalSecond({since:UInt32}) AND ({model:String} = '' OR model = {model:String})
GROUP BY model, version, t
ORDER BY t, model, version
"""


def _rows(client: Client, sql: str, db: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql.replace("{db}", db), parameters=params)
    out = []
    for row in result.result_rows:
        item = {}
        for name, value in zip(result.column_names, row, strict=True):
            if isinstance(value, float) and value != value:  # NaN (empty quantile) -> null
                value = None
            item[name] = value.isoformat() if hasattr(value, "isoformat") else value
        out.append(item)
    return out


def version_metrics(client: Client, db: str, since_s: int, model: str = "") -> list[dict[str, Any]]:
    """One row per (model, version) over the last ``since_s`` seconds."""
    return _rows(client, VERSION_METRICS, db, {"since": since_s, "model": model})


def version_series(
    client: Client, db: str, since_s: int, step_s: int = 60, model: str = ""
) -> list[dict[str, Any]]:
    """Per (model, version, step): traffic, error rate, latency, TTFT, cost — for charts."""
    return _rows(client, VERSION_SERIES, db, {"since": since_s, "step": step_s, "model": model})


def reward_series(
    client: Client, db: str, since_s: int, step_s: int = 60, model: str = ""
) -> list[dict[str, Any]]:
    """Per (model, version, step): how many responses were rewarded and their mean reward."""
    return _rows(client, REWARD_SERIES, db, {"since": since_s, "step": step_s, "model": model})


GENERATIONS = """
WITH published AS (
    SELECT model, version,
           argMax(parent_version, occurred_at) AS parent,
           argMax(method, occurred_at) AS method,
           argMax(eval, occurred_at) AS eval,
           min(occurred_at) AS published_at
    FROM {db}.model_versions FINAL
    WHERE kind = 'published' AND ({model:String} = '' OR model = {model:String})
    GROUP BY model, version),
  live AS (
    SELECT model, version, count() AS requests, quantileIf(0.5)(latency_ms, status = 'ok') AS latency_p50_ms
    FROM {db}.inference_completed FINAL
    WHERE ({model:String} = '' OR model = {model:String})
    GROUP BY model, version),
  rewarded AS (
    SELECT model, version, count() AS rewarded, avg(reward) AS reward_mean
    FROM {db}.latest_samples
    WHERE ({model:String} = '' OR model = {model:String})
    GROUP BY model, version)
SELECT p.model AS model, p.version AS version, p.parent AS parent, p.method AS method,
       p.published_at AS published_at,
       p.eval['candidate_accuracy'] AS accuracy, p.eval['incumbent_accuracy'] AS parent_accuracy,
       p.eval['gain_lower'] AS gain_lower, p.eval['gain_upper'] AS gain_upper,
       if(p.eval['incumbent_latency_ms'] > 0, p.eval['candidate_latency_ms'] / p.eval['incumbent_latency_ms'], NULL)
           AS latency_vs_parent,
       s.state AS state, l.requests AS requests, l.latency_p50_ms AS live_latency_p50_ms,
       r.rewarded AS rewarded, r.reward_mean AS live_reward_mean
FROM published AS p
LEFT JOIN {db}.version_state AS s ON s.model = p.model AND s.version = p.version
LEFT JOIN live AS l ON l.model = p.model AND l.version = p.version
LEFT JOIN rewarded AS r ON r.model = p.model AND r.version = p.version
ORDER BY model, published_at
SETTINGS join_use_nulls = 1
"""


def generations(client: Client, db: str, model: str = "") -> list[dict[str, Any]]:
    """Every published version with its parent (the version tree), the gate's held-out accuracy
    against its parent's with the gain's interval, its latency against its parent's, its state now
    and what it served live (requests, median latency, mean reward)."""
    return _rows(client, GENERATIONS, db, {"model": model})
