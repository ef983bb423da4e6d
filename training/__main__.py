"""``python -m training ...`` / ``torchrun --nproc_per_node N -m training train ...``."""
import sys

from .cli import main

sys.exit(main())
