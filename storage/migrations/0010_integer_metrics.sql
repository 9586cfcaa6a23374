-- Whether every finite value of a (run, metric) was logged as an integer (JSON int):
-- history and summaries then read back as ints, as W&B's do (``epoch == 3``, not 3.0).
-- Points stay Float64. Rows written before this column read as false (floats, as before).
ALTER TABLE metric_summaries ADD COLUMN IF NOT EXISTS integer Bool DEFAULT false AFTER last_time;
