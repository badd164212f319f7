"""The CLI's sub-command modules. Each defines `register(app: typer.Typer)`, which adds its
commands (or a sub-app) to the root app; cli.py lists the modules in COMMAND_MODULES."""
