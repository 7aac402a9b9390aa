import sys

from smollm2.cli import main

sys.exit(main())
