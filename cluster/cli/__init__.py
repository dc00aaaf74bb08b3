"""The ``rayline`` command line."""
