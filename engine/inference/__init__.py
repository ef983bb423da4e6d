"""From a raw frame to the enhanced raw: ``pipeline`` (``engine.Pipeline``), the multi-step
loop (``loop``), its CUDA graphs (``graphs``), tiling of large frames (``tiling``) and many
files with decoding / encoding in worker processes (``batch``)."""
