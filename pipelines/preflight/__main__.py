"""python -m pipelines.preflight (make preflight): see pipelines/preflight/cli.py."""

import sys

from pipelines.preflight.cli import main, parse_args

sys.exit(main(parse_args()))
