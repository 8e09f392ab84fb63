-- A response to a request that asked n > 1 keeps every choice, and feedback and samples name the
-- choice they are about (0 for n = 1). Rows stored before this migration read as n = 1.
ALTER TABLE {database}.inference_completed ADD COLUMN IF NOT EXISTS `choices` String DEFAULT '[]' AFTER `training_opt_out`;
ALTER TABLE {database}.feedback_submitted ADD COLUMN IF NOT EXISTS `choice` Int32 DEFAULT 0 AFTER `user_id`;
ALTER TABLE {database}.rewarded_samples ADD COLUMN IF NOT EXISTS `choice` Int32 DEFAULT 0 AFTER `user_id`;

-- The latest sample of each rated choice (was: of each request, which kept one choice of n > 1).
DROP VIEW IF EXISTS {database}.latest_samples;

CREATE VIEW IF NOT EXISTS {database}.latest_samples AS
SELECT
    request_id,
    choice,
    argMax(model, occurred_at) AS model,
    argMax(version, occurred_at) AS version,
    argMax(prompt, occurred_at) AS prompt,
    argMax(completion, occurred_at) AS completion,
    argMax(reward, occurred_at) AS reward,
    argMax(reward_sources, occurred_at) AS reward_sources,
    argMax(reference, occurred_at) AS reference,
    max(occurred_at) AS rewarded_at
FROM {database}.rewarded_samples FINAL
GROUP BY request_id, choice;
