import sys

from embedsense.server.launch import main

sys.exit(main())
