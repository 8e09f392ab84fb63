-- 0003: when each row reached ClickHouse. `_inserted_at - occurred_at` is the ingest lag
-- (event produced -> visible to queries); the e2e.freshness_ms benchmark reads it.
ALTER TABLE {database}.inference_requested ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.inference_completed ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.feedback_submitted ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.rewarded_samples ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.metrics_windows ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.model_versions ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE {database}.training_runs ADD COLUMN IF NOT EXISTS `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3);
