import sys

from embedsense.server.cli import main

sys.exit(main())
