"""Run azureml-inference-server-http on 127.0.0.1 only (its ``azmlinfsrv`` CLI binds 0.0.0.0, with no host flag).

The server reads the bind address from ``amlserver.DEFAULT_HOST`` when it starts, so setting that constant before
``amlserver.run()`` is all it takes. The process becomes the gunicorn master; the scoring worker is its child.
Worker count and threads come from ``serving.json`` beside the entry script (``chatft.serving.settings`` turns them
into the variables the server reads; an Azure deployment sets the same variables).

    python serve_local.py --entry_script score.py --model_dir MODEL_DIR --port 8890

``chatft.serving.launch.running_server`` starts this launcher as a child process and waits until it is healthy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chatft.processes import LOOPBACK
from chatft.serving.launch import SERVING_FILE
from chatft.serving.settings import load_serving_settings, server_environment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry_script", required=True, help="scoring script with init() and run()")
    parser.add_argument("--model_dir", required=True, help="folder exposed to the script as AZUREML_MODEL_DIR")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from azureml_inference_server_http import amlserver

    settings = load_serving_settings(Path(args.entry_script).resolve().parent / SERVING_FILE)
    os.environ.update(server_environment(settings))
    amlserver.DEFAULT_HOST = LOOPBACK
    # amlserver.run() parses sys.argv itself, with the azmlinfsrv flags.
    sys.argv = ["azmlinfsrv", "--entry_script", args.entry_script, "--model_dir", args.model_dir]
    sys.argv += ["--port", str(args.port)]
    amlserver.run()


if __name__ == "__main__":
    main(parse_args())
