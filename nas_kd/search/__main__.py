"""``python -m nas_kd.search``."""

import sys

from nas_kd.search.cli import main

sys.exit(main())
