"""``python -m nas_kd.report``."""

import sys

from nas_kd.report.page import main

sys.exit(main())
