"""The preflight report: the cost estimate always, quota when a workspace client is given."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.azure.cli import SubmitOptions
from pipelines.azure.plan import local_data_path
from pipelines.preflight.cost import CostLine, estimate_cost
from pipelines.preflight.inputs import PreflightError, load_pricing, pipeline_topology, topology
from pipelines.preflight.quota import QuotaNeed, QuotaRow, check_quota, quota_advice, quota_needs
from pipelines.preflight.tokens import estimate_tokens
from pipelines.settings import RunSettings, load_compute


@dataclass
class PreflightReport:
    ok: bool
    quota: list[QuotaRow] = field(default_factory=list)
    quota_note: str = ""
    needs: list[QuotaNeed] = field(default_factory=list)  # what the run holds at once, listed even unchecked
    cost: list[CostLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pricing: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        out = ["Preflight", "  Quota (dedicated vCPUs)"]
        if self.quota:
            out.append(f"    {'VM family':<34} {'need':>6} {'available':>10} {'limit':>7}  status")
            for row in self.quota:
                available = "-" if row.available is None else str(row.available)
                limit = "-" if row.limit is None else str(row.limit)
                out.append(f"    {row.family:<34} {row.need:>6} {available:>10} {limit:>7}  {row.status}")
                out.extend(f"      {purpose}" for purpose in row.purposes)
        else:
            out.append(f"    not checked: {self.quota_note}; the run needs:")
            out.extend(f"      {need.purpose}: {need.nodes} x {need.vm_size}" for need in self.needs)
        if self.cost:
            source = self.pricing.get("prices", {})
            currency = self.pricing.get("currency", "USD")
            out.append(
                f"  Cost estimate ({currency}; list prices retrieved {source.get('retrieved')}; "
                "every assumption is in infra/pricing.json)"
            )
            for line in self.cost:
                usd = "" if line.usd is None else f"${line.usd:,.2f}"
                out.append(f"    {line.item:<20} {usd:>10}  {line.detail}")
        out.extend(f"  ERROR: {error}" for error in self.errors)
        return "\n".join(out)


def run_preflight(settings: RunSettings, data_plan=None, ml_client=None, options=None, job=None) -> PreflightReport:
    """Cost always; quota when a client is given (a dry run passes none). ``ok`` is False on any quota shortfall.
    ``job``: the built pipeline whose topology is priced (built from ``settings`` when not given)."""
    options = options or SubmitOptions()
    compute = load_compute()
    report = PreflightReport(ok=True, needs=quota_needs(settings, compute))
    try:
        report.pricing = load_pricing(options.pricing)
        local = data_plan.local_path if data_plan else local_data_path(settings)
        tokens = estimate_tokens(settings, local, report.pricing, options.tokens, options.data_report)
        steps = topology(job) if job is not None else pipeline_topology(settings)
        report.cost = estimate_cost(settings, tokens, compute, report.pricing, steps)
    except PreflightError as err:
        # The estimate is advice: say why it is missing, but do not block a submission on it.
        report.cost = [CostLine("cost", f"not estimated: {err}", None)]
    if ml_client is None:
        report.quota_note = "dry run (no workspace contacted)"
        return report
    add_quota(report, ml_client)
    return report


def add_quota(report: PreflightReport, ml_client) -> None:
    """The quota rows of the workspace's region; a shortfall makes the report not ok, with advice."""
    from azure.core.exceptions import HttpResponseError

    try:
        report.quota, _ = check_quota(ml_client, report.needs)
    except HttpResponseError as err:  # includes ClientAuthenticationError (no az login, no identity)
        if err.status_code == 403:
            # Reading quota is a subscription-level permission a workspace-scoped identity may lack: say so, go on.
            report.quota_note = (
                "no permission to read quota (needs Microsoft.MachineLearningServices/locations/usages/read and "
                "vmSizes/read on the subscription); check it in Azure ML studio → Quota"
            )
            return
        report.ok = False
        report.quota_note = "the quota check failed"
        report.errors.append(f"quota check failed: {err.message or err}")
        return
    for row in report.quota:
        if not row.ok and not row.status.startswith(("no quota reported", "usage not reported")):
            report.ok = False
            report.errors.append(quota_advice(row))
