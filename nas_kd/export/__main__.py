"""``python -m nas_kd.export``."""

import sys

from nas_kd.export.cli import main

sys.exit(main())
