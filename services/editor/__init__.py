"""The editor service: accounts and end-to-end encrypted object storage (fabula.editor.v1)."""
