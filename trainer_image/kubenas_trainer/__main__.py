import sys

from kubenas_trainer.main import main

sys.exit(main())
