-- The sending logs' retention (docs/reliability.md): once a finished delivery's feedback
-- events are pruned and it is past the longer retention of its delivery logs (Adobe's
-- six months), its sending logs and dropped recipients go too. Its KPIs, counters and
-- breakdowns stay, final: ComputeStats no longer recounts them.
ALTER TABLE deliveries ADD COLUMN logs_pruned_time timestamptz;
