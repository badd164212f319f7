"""Fabula's benchmarks: `make bench` (or `python -m bench [area ...]`).

Each area is a module here exposing `run() -> dict` that returns
`{"figures": {name: number}, "ratios": {name: number}, "summary": "markdown (optional)"}`.
`python -m bench` runs every such module (or only the areas named), writes
`bench/results/<area>.json` ({"machine", "date", "figures", "ratios", "command", "summary"}) and
regenerates `bench/RESULTS.md` from every result file (see common.py).
"""
