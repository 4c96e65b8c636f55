import sys

from searchr1.cli import main

sys.exit(main())
