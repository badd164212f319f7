"""One module per resource; `gateway.main` includes their routers."""
