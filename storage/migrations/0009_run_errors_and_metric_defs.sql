-- A failed run's traceback (from its run_finish; cleared when the run resumes), and
-- the run's define_metric specs as a JSON array of {name, step_metric, goal, summary},
-- oldest first: both written whole with the run's row by the run processor.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS error String;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS metric_defs String DEFAULT '[]';
