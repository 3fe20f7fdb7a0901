import sys

from kubenas_controller.main import main

sys.exit(main())
