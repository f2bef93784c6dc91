"""``python -m nas_kd.compress``."""

import sys

from nas_kd.compress.cli import main

sys.exit(main())
