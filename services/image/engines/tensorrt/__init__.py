"""TensorRT: the engine file wrapper (engine.py) and the engine cache layout (paths.py).

Nothing here imports `tensorrt` at module level: it is installed on GPU images only (the
`tensorrt` extra), and the CPU service must import this package without it.
"""
