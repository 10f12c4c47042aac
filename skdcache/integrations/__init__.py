"""Use skdcache's teacher caches from training loops people already run (see `skdcache.integrations.transformers`)."""
