"""One process's services, built once from its settings: database, config, channels, sender."""
