"""Stage 5, where a step's targets come from: the cache or a live teacher behind one `TargetSource` interface
(`sources`, `live`), and the per-row assembly of routed targets (`row_targets`)."""
