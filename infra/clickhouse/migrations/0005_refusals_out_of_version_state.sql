-- A gateway that refuses a version's adapter says so on model.versions (kind 'rejected',
-- decision 'refused', actor 'gateway:<instance>'): that is one replica's report, not the version's
-- state, so the state view leaves it out (`rftloop versions`, the dashboard). The judge reads the
-- refusals to give the reason when a candidate gets no traffic.
DROP VIEW IF EXISTS {database}.version_state;

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
FROM (SELECT * FROM {database}.model_versions FINAL WHERE decision != 'refused')
GROUP BY model, version;
