"""``python -m nas_kd.teacher``."""

import sys

from nas_kd.teacher.cli import main

sys.exit(main())
