"""What makes and talks to the cluster: settings, local stack, registry client, logging, metrics, CLI."""
