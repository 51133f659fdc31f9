"""The one place that touches azure-ai-ml internals: private attributes, and behaviour the public API leaves open.

Everything else in the project goes through the functions here, so an SDK upgrade that moves one of them breaks one
module, and tests/pipelines/test_sdk_private.py (which exercises each function against the pinned azure-ai-ml)
says which. Where a public route exists it is used instead: the registered components are wired into the pipeline
through the DSL (pipelines/azure/assets.py), schedules are serialised with ``JobSchedule.dump``.

What remains, and why there is no public route (azure-ai-ml 1.35.2):
  * ``job._validate()``: the offline validation ``jobs.create_or_update`` runs before sending; the public
    ``ml_client.jobs.validate`` needs a workspace.
  * ``node.inputs[name]._data`` and a binding's ``_owner`` / ``_port_name`` / ``_name``: what a pipeline step's input
    is bound to (an upstream output, a pipeline input, a literal). The local backend runs the same PipelineJob
    object, and the public API only exposes these bindings as strings inside the dumped YAML.
  * ``VmSize`` / ``Usage`` from ``compute.list_sizes()`` / ``list_usage()``: ``_from_rest_object`` copies the REST
    payload's camelCase keys (``vCPUs``, ``currentValue``, ``name`` as a dict) onto the entity and leaves the
    documented snake_case attributes None. ``rest_field`` reads either.
  * ``workspace._workspace_id``: the workspace's GUID (``properties.workspaceId``), which a serverless endpoint's
    model id for a fine-tuned model contains (``azureml://locations/<region>/workspaces/<guid>/models/...``, as
    Microsoft's Model-as-a-Service sample builds it); the Workspace entity has no public attribute for it.
  * ``azure.ai.ml._utils._asset_utils.get_ignore_file``: which files of a component's code folder Azure ML leaves
    out of the uploaded snapshot (``.amlignore``, else ``.gitignore``, in that folder); the local backend leaves out
    the same files, so its snapshot and cache key match what Azure ML would upload. No public function says it.
  * ``ml_client._credential``: the credential a client was built with, to open the model's registry with the same
    one (pipelines/azure/serverless/); MLClient does not expose it.
  * ``azure.ai.ml._utils._experimental._should_skip_warning``: every experimental class (serverless endpoints,
    marketplace subscriptions, fine-tuning jobs, DataCollector) asks it, on each construction, whether it is being
    built from a REST response. It answers with ``inspect.stack()``, which reads the source of every frame: ~77 ms a
    call with this stack's modules loaded (AMD EPYC Zen 5, 2 cores), a third of the serverless tests' time.
    ``fast_experimental_check`` swaps in a walk over the same frames that reads only their function names.
"""

from __future__ import annotations

import sys
from typing import Any


def validation_errors(job) -> str | None:
    """The SDK's own offline checks of a pipeline job; None when it passes, else the SDK's report."""
    result = job._validate()
    return None if result.passed else str(result)


def input_binding(node_input) -> Any:
    """What a step's input is bound to: a NodeOutput, a PipelineInput, an Input, a literal or None."""
    return node_input._data


def binding_kind(binding) -> str:
    """``"output"`` (an upstream step's output), ``"pipeline"`` (a pipeline-level input) or ``"value"``."""
    name = type(binding).__name__
    return {"NodeOutput": "output", "PipelineInput": "pipeline"}.get(name, "value")


def upstream_step(binding) -> str:
    """The name of the step whose output ``binding`` (a NodeOutput) is."""
    return binding._owner.name


def port_name(binding) -> str:
    """The output port of a NodeOutput, or the pipeline input name of a PipelineInput."""
    return binding._port_name


def pipeline_output_name(node_output) -> str | None:
    """The pipeline-level output a step's output is bound to, if any."""
    binding = getattr(node_output, "_data", None)
    return getattr(binding, "_port_name", None) or getattr(binding, "_name", None)


def rest_field(entity, wire_name: str, attribute: str | None = None) -> Any:
    """A field of an entity built by ``_from_rest_object`` with ``__dict__.update(rest.as_dict())``: the wire's
    camelCase key when present, else the documented attribute. None when neither is set (never a default)."""
    fields = vars(entity)
    value = fields.get(wire_name)
    if value is None and attribute:
        value = fields.get(attribute)
    return value


def workspace_guid(workspace) -> str:
    """The workspace's GUID (REST ``properties.workspaceId``)."""
    return workspace._workspace_id


def client_credential(ml_client):
    """The credential ``ml_client`` was built with."""
    return ml_client._credential


def ignore_file(directory):
    """The ignore rules Azure ML applies to ``directory`` when it uploads it as code: ``.is_file_excluded(path)``."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    return get_ignore_file(directory)


def _built_from_rest() -> bool:
    """What the SDK's ``_should_skip_warning`` answers: is a ``_from_rest_object`` call on the stack?"""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_from_rest_object":
            return True
        frame = frame.f_back
    return False


def fast_experimental_check():
    """Answer the SDK's per-construction "built from REST?" question without ``inspect.stack()``; same answer.
    Returns the SDK's own check (the first one replaced, however often this is called)."""
    from azure.ai.ml._utils import _experimental

    global _sdk_check
    if _sdk_check is None:
        _sdk_check = _experimental._should_skip_warning
    _experimental._should_skip_warning = _built_from_rest
    return _sdk_check


_sdk_check = None
