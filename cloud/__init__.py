"""Cloud tier: workers with larger models that answer turns edges escalate over NATS."""
