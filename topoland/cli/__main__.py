"""``python -m topoland.cli``: the ``topoland`` command."""
import sys

from topoland.cli.main import main

sys.exit(main())
