"""rayline: train."""
