-- The sink's parts stay compact (one data file per part) up to 128 MiB instead of ClickHouse's
-- default 10 MiB. A batch of 20,000 completions makes parts of ~10-30 MiB, right on the default
-- threshold: written wide, each part is two files per column (~60), and its merges rewrite them.
-- Measured with chdb 26.9, 60,000 framed completions in 3 batches, 3 partitions side by side, 6
-- alternating rounds: the sink's own INSERTs through the embedded front went from 123.8 k to
-- 159.4 k rows/s (14.0 -> 11.6 CPU-us a row); the same INSERTs straight into chdb, 4 rounds: 195 k ->
-- 281 k. Parts that merges grow past 128 MiB are wide again, as before. ALTER ... MODIFY SETTING
-- applies to parts written from now on.
ALTER TABLE {database}.inference_requested MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.inference_completed MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.feedback_submitted MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.rewarded_samples MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.metrics_windows MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.model_versions MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.training_runs MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.user_erasures MODIFY SETTING min_bytes_for_wide_part = 134217728;
