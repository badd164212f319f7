"""The gateway's HTTP bodies, one module per service, each with its pydantic ⇄ protobuf translation."""
