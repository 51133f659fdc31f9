"""Compatibility re-exports of the old single-module Azure backend, now the ``pipelines.azure`` package.

Kept only while modules of other work in progress still import from here (infra/retrain_function/retrain_handler.py,
tests/pipelines/test_retrain.py, tests/infra/test_retrain_function.py); new code imports from ``pipelines.azure.*``.
Delete this file when nothing imports it.
"""

from pipelines.azure.assets import ensure_assets, get_or_none
from pipelines.azure.cli import (
    AZURE_PRESET,
    EXIT_INVALID,
    EXIT_PREFLIGHT,
    EXIT_RUN_FAILED,
    SubmitOptions,
    add_azure_arguments,
    azure_parser,
    settings_or_exit,
)
from pipelines.azure.client import WORKSPACE_ENV, WorkspaceConfigError, connect, workspace_client
from pipelines.azure.plan import (
    CONTENT_TAG,
    FINGERPRINT_TAG,
    VERSION_DIGITS,
    SubmissionError,
    data_fingerprint,
    local_data_path,
    plan_data_asset,
    plan_submission,
    prepare,
    with_local_data,
)
from pipelines.azure.plan import prep_data_module as _prep_data
from pipelines.azure.submit import ready_workspace, submit

__all__ = [
    "AZURE_PRESET",
    "CONTENT_TAG",
    "EXIT_INVALID",
    "EXIT_PREFLIGHT",
    "EXIT_RUN_FAILED",
    "FINGERPRINT_TAG",
    "VERSION_DIGITS",
    "WORKSPACE_ENV",
    "SubmissionError",
    "SubmitOptions",
    "WorkspaceConfigError",
    "_prep_data",
    "add_azure_arguments",
    "azure_parser",
    "connect",
    "data_fingerprint",
    "ensure_assets",
    "get_or_none",
    "local_data_path",
    "plan_data_asset",
    "plan_submission",
    "prepare",
    "ready_workspace",
    "settings_or_exit",
    "submit",
    "with_local_data",
    "workspace_client",
]
