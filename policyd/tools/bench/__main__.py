"""``python -m policyd.tools.bench``: the same as ``m365-policyd bench``."""

import sys

from policyd.tools.bench.commandline import main

sys.exit(main())
