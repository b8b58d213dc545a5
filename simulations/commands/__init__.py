"""``cloud-hub`` subcommands that run the harness (registered by entry point, see ``cli``)."""
