"""What every Fabula service shares: settings, logging, errors, health, tracing, metrics, serving."""
