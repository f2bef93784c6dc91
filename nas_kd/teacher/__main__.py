"""``python -m nas_kd.teacher``."""

import sys

from nas_kd.teacher.load import main

sys.exit(main())
