"""Long-term memory: what earlier runs' agents produced, recalled by later runs."""
