"""python -m pipelines.azure.serverless submit | preflight | teardown (see the package docstring)."""

import sys

from pipelines.azure.serverless.cli import main, parse_args

sys.exit(main(parse_args()))
