import sys

from phasedlstm.cli import main

sys.exit(main())
