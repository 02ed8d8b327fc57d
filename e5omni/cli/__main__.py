"""`python -m e5omni.cli ...` (what `torchrun -m e5omni.cli train ...` runs)."""

import sys

from e5omni.cli import main

sys.exit(main())
