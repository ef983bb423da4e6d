"""The engine's limits as plain numbers, importable without torch.

The command line builds its parser (and prints ``--help``) from these, so that
``exposure-diffusion --help`` and argument errors never import torch or Triton (issue 22,
item 6: 5-8 s of imports before any text). The modules that enforce each limit keep their
own definition, named beside each value below; ``tests/test_cli.py`` asserts that
every value here equals the enforcing module's, so the two cannot drift apart.
"""
from __future__ import annotations

from pathlib import Path

# engine.inference.pipeline.MAX_RATIO: the largest exposure ratio.
MAX_RATIO = 10000.0
# engine.inference.pipeline.MAX_STEPS: network evaluations per frame.
MAX_STEPS = 100
# engine.inference.pipeline.MAX_SEED: seeds a torch.Generator takes without wrapping.
MAX_SEED = 2**64 - 1
# engine.inference.pipeline.DEFAULT_CHECKPOINT: the model shipped with the package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "default_model.pt"
# engine.inference.loop.SIZE_MULTIPLE: packed sizes the backbones take (four 2x2 poolings).
SIZE_MULTIPLE = 16
# engine.camera.K_RANGE: system gain in DN per photo-electron.
K_RANGE = (0.01, 1.0e4)
# engine.calibration.stats.PPCC_SAMPLES: bias pixels per ISO for the Tukey-lambda fit.
PPCC_SAMPLES = 200_000
