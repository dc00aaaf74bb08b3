"""rayline: deployments."""
