"""``python -m data.synthetic``: the command line of :mod:`data.synthetic.cli`."""
import sys

from data.synthetic.cli import main

sys.exit(main())
