import sys

from spikeprune.cli import main

sys.exit(main())
