"""Before spending: is there quota for the clusters and the endpoint, and what will the run cost?

One module per concern: inputs (pricing, component defaults and the pipeline's topology, each read once), tokens
(training tokens), quota (need vs available vCPUs), cost (the estimate), report (both, as ``run_preflight``) and
cli (``make preflight``, with the details of each).
"""

from pipelines.preflight.cost import CostLine, estimate_cost
from pipelines.preflight.inputs import PRICING_FILE, PreflightError, Topology, load_pricing, pipeline_topology, topology
from pipelines.preflight.quota import QuotaNeed, QuotaRow, check_quota, family_key, quota_needs
from pipelines.preflight.report import PreflightReport, run_preflight
from pipelines.preflight.tokens import TokenEstimate, estimate_tokens

__all__ = [
    "CostLine",
    "PRICING_FILE",
    "PreflightError",
    "PreflightReport",
    "QuotaNeed",
    "QuotaRow",
    "TokenEstimate",
    "Topology",
    "check_quota",
    "estimate_cost",
    "estimate_tokens",
    "family_key",
    "load_pricing",
    "pipeline_topology",
    "quota_needs",
    "run_preflight",
    "topology",
]
