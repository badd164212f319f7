"""TensorRT: the back end that runs a model's engines (backend.py), one engine file built, loaded
and run (engine.py), the engine cache layout (paths.py) and the ahead-of-time build (build_all.py).

Nothing here imports `tensorrt` at module level: it is installed on GPU images only (the
`tensorrt` extra), and the CPU service must import this package without it.
"""
