"""Source connectors: each reads new records of one source system as a bronze batch."""
