"""Ray job entrypoints: thin modules runnable as ``python -m jobs.<name>`` or via ``ray job submit``."""
