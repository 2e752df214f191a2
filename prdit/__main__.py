import sys

from prdit.cli import main

sys.exit(main())
