"""Sampling presets: one JSON file per preset in this folder (see `services.text.presets_store`)."""
