"""`python -m smollm2 ...`: the same CLI as the `smollm2` command."""

import sys

from smollm2.cli import main

sys.exit(main())
