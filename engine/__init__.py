"""engine: ExposureDiffusion inference on raw frames (raw I/O, backbones, checkpoints).

The `Pipeline` that ties these together is being built under issue #3; the modules
here (`engine.rawio`, `engine.dng`, `engine.backbones`, `engine.checkpoint`) are
usable on their own.
"""
