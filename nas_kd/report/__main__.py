"""``python -m nas_kd.report``."""

import sys

from nas_kd.report.cli import main

sys.exit(main())
