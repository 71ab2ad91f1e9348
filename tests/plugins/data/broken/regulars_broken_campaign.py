"""A plugin module that fails on import, as one with a missing dependency does."""

raise ImportError("No module named 'campaign_sdk' (needed by regulars-broken)")
