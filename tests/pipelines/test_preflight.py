"""Preflight, offline: quota read by a real MLClient from the REST API simulation (tests/helpers/azure_transport.py,
payloads shaped like the REST spec's Usage/list and VirtualMachineSize/list examples), token and cost arithmetic
against small inputs."""

from __future__ import annotations

import json

import pytest

from pipelines import preflight
from pipelines.azure.cli import SubmitOptions
from pipelines.preflight import cli as preflight_cli
from pipelines.settings import PROJECT_ROOT, load_compute, load_settings

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"
A100, DSV3, T4 = "standardNCADSA100v4Family", "standardDSv3Family", "standardNCASv3_T4Family"


@pytest.fixture
def settings():
    return load_settings(AZURE)


def set_usage(sim, label: str, current: int | None, limit: int) -> None:
    """Set the subscription-level entry 'Standard <label> Family Cluster Dedicated vCPUs' (or the regional total)."""
    name = (
        "Total Cluster Dedicated Regional vCPUs"
        if label == "total"
        else f"Standard {label} Family Cluster Dedicated vCPUs"
    )
    (entry,) = [u for u in sim.usages if u["name"]["value"] == name and "/workspaces/" not in u["id"]]
    entry["limit"] = limit
    if current is None:
        del entry["currentValue"]
    else:
        entry["currentValue"] = current


def test_need_and_availability_come_from_the_rest_payloads_per_family_and_in_total(settings, azure_sim):
    """Defect 1: the SDK's VmSize/Usage carry the wire's camelCase keys (vCPUs, currentValue, name as a dict); the
    old preflight read the snake_case attributes, which are None, and crashed with a TypeError."""
    rows, region = preflight.check_quota(azure_sim.client(), preflight.quota_needs(settings, load_compute()))
    by_family = {row.family: row for row in rows}
    assert region == "eastus2"
    # compute.json: 1 x NC24ads_A100_v4 (24 vCPUs), 2 x D4s_v3 (4), endpoint 1 x NC8as_T4_v3 (8): ceil(1.2 x 1) = 2
    # instances per deployment, and blue and green side by side during a rollout.
    assert (by_family[A100].need, by_family[A100].available, by_family[A100].limit) == (24, 48, 48)
    assert (by_family[DSV3].need, by_family[DSV3].available) == (8, 24 - 4)
    assert (by_family[T4].need, by_family[T4].available) == (2 * 2 * 8, 64 - 8)
    total = by_family["total dedicated regional vCPUs"]
    assert (total.need, total.available) == (24 + 8 + 32, 100 - 10)
    # The subscription-level A100 entry (limit 48) is compared, not the workspace's share (limit 0) nor LowPriority.
    assert all(row.ok for row in rows)
    assert "1 x Standard_NC24ads_A100_v4 (24 vCPUs)" in by_family[A100].purposes[0]
    paths = [r.path for r in azure_sim.requests]
    assert paths[0] == "{ws}" and any(p.endswith("/locations/eastus2/vmSizes") for p in paths)
    # What make preflight prints from the same payloads.
    text = preflight.run_preflight(settings, ml_client=azure_sim.client()).text.splitlines()
    assert f"    {T4:<34} {32:>6} {56:>10} {64:>7}  ok" in text
    assert f"    {'total dedicated regional vCPUs':<34} {64:>6} {90:>10} {100:>7}  ok" in text


def test_a_family_with_zero_quota_blocks_and_one_the_service_does_not_report_is_said(settings, azure_sim):
    set_usage(azure_sim, "NCASv3_T4", 0, 0)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    rows = {row.family: row for row in report.quota}
    assert rows[T4].status == "zero quota in eastus2" and not report.ok
    assert report.errors[0].startswith(f"{T4}: zero quota in eastus2 (need 32 vCPUs")

    azure_sim.usages = [u for u in azure_sim.usages if "NCASv3_T4" not in u["name"]["value"]]
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    row = next(r for r in report.quota if r.family == T4)
    assert (row.status, row.available, row.limit) == ("no quota reported in eastus2", None, None)
    assert report.ok and f"{T4}" in report.text and "no quota reported" in report.text


def test_a_missing_current_value_is_unknown_not_zero(settings, azure_sim):
    """Reading a missing currentValue as 0 would report the whole limit as free."""
    set_usage(azure_sim, "NCADSA100v4", None, 48)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    row = next(r for r in report.quota if r.family == A100)
    assert (row.status, row.available, row.limit) == ("usage not reported in eastus2", None, 48)
    assert not row.ok and "usage not reported" in report.text


@pytest.mark.parametrize(
    ("gpu_quota", "status"),
    [((0, 0), "zero quota in eastus2"), ((12, 30), "short by 6"), ((0, 24), "ok")],
)
def test_gpu_family_quota_is_judged_on_what_is_free(settings, azure_sim, gpu_quota, status):
    set_usage(azure_sim, "NCADSA100v4", *gpu_quota)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    row = next(r for r in report.quota if r.family == A100)
    assert row.status == status
    assert report.ok is (status == "ok")
    if status != "ok":
        current, limit = gpu_quota
        free = f"{limit - current} available of limit {limit}" if limit else "limit 0"
        assert report.errors == [
            f"{A100}: {status} (need 24 vCPUs, {free}); request more in Azure ML studio → Quota "
            "(or the Azure portal → Quotas → Machine learning), or lower max_nodes / pick another size in "
            "infra/compute.json"
        ]


def test_the_regional_total_can_fail_on_its_own(settings, azure_sim):
    set_usage(azure_sim, "total", 0, 40)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    assert not report.ok
    assert report.errors[0].startswith("total dedicated regional vCPUs: short by 24")


def test_no_permission_to_read_quota_is_a_403_that_is_explained_and_does_not_block(settings, azure_sim):
    azure_sim.quota_forbidden = True
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    assert report.ok and report.quota == []
    assert "not checked: no permission to read quota" in report.text
    assert [r.status for r in azure_sim.requests if "/locations/" in r.path] == [403]


def test_a_size_the_region_does_not_offer_fails_with_a_pointer_to_compute_json(settings, monkeypatch, azure_sim):
    compute = load_compute()
    compute["gpu_cluster"] = compute["gpu_cluster"] | {"vm_size": "Standard_ND96isr_H200_v5"}
    monkeypatch.setattr(preflight.report, "load_compute", lambda: compute)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    assert not report.ok
    assert (
        "Standard_ND96isr_H200_v5 is not offered in eastus2: pick another size in infra/compute.json" in report.errors
    )


@pytest.mark.parametrize(
    "name",
    ["Standard NCASv3_T4 Family Cluster Dedicated vCPUs", "standardNCASv3_T4Family", "Standard_NCASv3_T4_Family"],
)
def test_a_family_matches_its_usage_in_every_spelling_the_service_uses(name):
    """The size listing says standardNCASv3_T4Family; the REST spec's usage examples say 'Standard NCASv3_T4 Family
    Cluster Dedicated vCPUs' (the az CLI shows the first form in usage names too)."""
    assert preflight.family_key(name) == preflight.family_key(T4) == "ncasv3t4"
    assert preflight.family_key("Standard NCASv3_T4 Family Cluster LowPriority vCPUs") is None


def test_dry_run_estimates_cost_without_any_client(settings):
    report = preflight.run_preflight(settings, ml_client=None)
    assert report.ok and report.quota == []
    assert "not checked: dry run" in report.text
    assert [line.item for line in report.cost] == [
        "training tokens",
        "GPU node time",
        "CPU node time",
        "pipeline run",
        "endpoint, per hour",
    ]


def test_cost_is_tokens_over_throughput_times_price_plus_overheads(settings, tmp_path):
    overrides = {
        "prices": {"vm_hourly": {"Standard_NC24ads_A100_v4": 4.0, "Standard_D4s_v3": 0.2, "Standard_NC8as_T4_v3": 3.0}},
        "throughput": {"training_tokens_per_second": {"Standard_NC24ads_A100_v4": 1000}},
        "overhead": {"gpu_step_minutes": 6, "cpu_step_minutes": 12},
    }
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(overrides))
    report = preflight.run_preflight(settings, options=SubmitOptions(tokens=7_200_000, pricing=path))
    cost = {line.item: line.usd for line in report.cost}
    idle = 120 / 3600  # compute.json: both clusters scale down after 120 s idle
    gpu_hours = 7_200_000 / 1000 / 3600 + 3 * 6 / 60 + idle  # 2 h training + finetune, score_base, evaluate
    cpu_hours = 5 * 12 / 60 + idle
    assert cost["GPU node time"] == pytest.approx(gpu_hours * 4.0)
    assert cost["CPU node time"] == pytest.approx(cpu_hours * 0.2)
    assert cost["pipeline run"] == pytest.approx(gpu_hours * 4.0 + cpu_hours * 0.2)
    assert cost["endpoint, per hour"] == pytest.approx(3.0)
    # Keys the override does not name keep their infra/pricing.json values.
    assert report.pricing["hf_datasets"]["HuggingFaceH4/ultrachat_200k"]["rows"]["train_sft"] == 207865


def test_tokens_for_the_hugging_face_preset_come_from_the_split_size(settings):
    pricing = preflight.load_pricing()
    estimate = preflight.estimate_tokens(settings, None, pricing)
    # train_sft[:1%] of 207,865 rows = 2,079 rows x 1,450 tokens x 0.8 train share x 1 epoch.
    assert estimate.processed == round(2079 * 1450 * 0.8)
    assert "2,079 rows of HuggingFaceH4/ultrachat_200k" in estimate.basis and "(assumed)" in estimate.basis


def test_tokens_for_local_data_are_characters_over_four_plus_template_tokens(settings, tmp_path):
    chat = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 80}]}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("\n".join(json.dumps(chat) for _ in range(10)) + "\nnot json\n")
    estimate = preflight.estimate_tokens(settings, data, preflight.load_pricing())
    per_chat = 120 // 4 + 2 * 5  # 120 content characters / 4, plus 5 template tokens per message
    assert estimate.processed == round(10 * per_chat * 0.8)  # the unparsable line counts as a record, not as tokens
    assert "11 local records" in estimate.basis and "approximation" in estimate.basis


def test_tokens_per_chat_are_capped_at_max_seq_length(settings, tmp_path):
    chat = {"messages": [{"role": "user", "content": "x" * 40_000}, {"role": "assistant", "content": "ok"}]}
    (tmp_path / "a.jsonl").write_text(json.dumps(chat) + "\n")
    capped = load_settings(AZURE, ["finetune.max_seq_length=512", "finetune.num_train_epochs=2"])
    estimate = preflight.estimate_tokens(capped, tmp_path / "a.jsonl", preflight.load_pricing())
    assert estimate.processed == round(512 * 0.8) * 2  # train tokens per epoch, then epochs


def test_tokens_from_a_data_report_and_from_max_steps(settings, tmp_path):
    report = tmp_path / "data_report.json"
    two_epochs = load_settings(AZURE, ["finetune.num_train_epochs=2"])
    # Compute is paid for every processed position, not only the loss (assistant) tokens.
    tokens = {"counted_with": "m", "total": 1300, "trained_per_epoch": 400, "processed_per_epoch": 1000}
    report.write_text(json.dumps({"tokens": tokens}))
    assert preflight.estimate_tokens(two_epochs, None, {}, data_report=report).processed == 2000
    report.write_text(json.dumps({"tokens": {"total": 9, "trained_per_epoch": 400}}))  # the older, shorter block
    assert preflight.estimate_tokens(two_epochs, None, {}, data_report=report).processed == 800
    steps = load_settings(AZURE, ["finetune.max_steps=10"])
    # 10 steps x 2 rows x 8 accumulation x 2048 tokens (azure.yaml)
    assert preflight.estimate_tokens(steps, None, preflight.load_pricing()).processed == 10 * 2 * 8 * 2048


def test_a_data_report_without_counts_or_tokens_is_refused_with_a_way_out(settings, tmp_path):
    report = tmp_path / "data_report.json"
    untokenized = {"counted_with": None, "trained_per_epoch": None, "processed_per_epoch": None}
    report.write_text(json.dumps({"tokens": untokenized}))
    with pytest.raises(preflight.PreflightError, match="no token counts .* pass --tokens N"):
        preflight.estimate_tokens(settings, None, {}, data_report=report)
    report.write_text("{}")
    with pytest.raises(preflight.PreflightError, match="expected a validate step's data_report.json"):
        preflight.estimate_tokens(settings, None, {}, data_report=report)


def test_an_unknown_dataset_or_size_asks_for_what_is_missing(settings):
    unknown = load_settings(AZURE, ["prep_data.hf_dataset=someone/chats"])
    report = preflight.run_preflight(unknown)
    assert "not estimated: no size known for Hugging Face dataset someone/chats: pass --tokens N" in report.text
    assert report.ok  # the estimate is advice; it never blocks on its own
    pricing = preflight.load_pricing()
    del pricing["prices"]["vm_hourly"]["Standard_NC24ads_A100_v4"]
    estimate = preflight.TokenEstimate(1000, "given")
    with pytest.raises(preflight.PreflightError, match="no hourly price for Standard_NC24ads_A100_v4"):
        preflight.estimate_cost(settings, estimate, load_compute(), pricing, preflight.pipeline_topology(settings))


def test_every_price_and_rate_in_pricing_json_says_where_it_comes_from():
    pricing = json.loads(preflight.PRICING_FILE.read_text())
    assert "not measured" in pricing["_about"].lower() or "assumptions" in pricing["_about"].lower()
    for section in ("prices", "throughput", "overhead", "tokens", "hf_datasets"):
        assert pricing[section]["_source"], section
    assert pricing["prices"]["retrieved"]
    compute = load_compute()
    sizes = {compute["gpu_cluster"]["vm_size"], compute["cpu_cluster"]["vm_size"]}
    sizes.add(compute["online_endpoint"]["instance_type"])
    assert sizes <= set(pricing["prices"]["vm_hourly"]), "every size in compute.json needs a price"
    assert compute["gpu_cluster"]["vm_size"] in pricing["throughput"]["training_tokens_per_second"]


def test_cli_dry_run_prints_the_table_offline(capsys, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    args = preflight_cli.parse_args(["--dry-run", "--data", str(data)])
    assert preflight_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "not checked: dry run" in out and "1 local records" in out


def test_cli_fails_with_exit_3_on_zero_quota(capsys, azure_sim):
    set_usage(azure_sim, "NCASv3_T4", 0, 0)
    assert preflight_cli.main(preflight_cli.parse_args([]), ml_client=azure_sim.client()) == 3
    assert f"{T4}: zero quota in eastus2" in capsys.readouterr().out


def test_the_estimate_follows_the_steps_of_the_built_pipeline(settings, tmp_path):
    """GPU and CPU steps are read from the built job's nodes, so a step moved or removed changes the estimate."""
    from pipelines.finetune_pipeline import build_pipeline

    path = tmp_path / "pricing.json"
    path.write_text(json.dumps({"overhead": {"gpu_step_minutes": 6, "cpu_step_minutes": 12}}))
    options = SubmitOptions(tokens=1_000_000, pricing=path)

    def cost(job) -> dict[str, float]:
        return {line.item: line.usd for line in preflight.run_preflight(settings, options=options, job=job).cost}

    job = build_pipeline(settings)
    before = cost(job)
    gpu_price = preflight.load_pricing(path)["prices"]["vm_hourly"][load_compute()["gpu_cluster"]["vm_size"]]
    assert preflight.topology(job).on(load_compute()["gpu_cluster"]) == ["finetune", "score_base", "evaluate"]
    del job.jobs["base_scores"]  # one GPU step fewer
    assert cost(job)["GPU node time"] == pytest.approx(before["GPU node time"] - 6 / 60 * gpu_price)
    job.jobs["evaluation"].compute = load_compute()["cpu_cluster"]["name"]  # a GPU step moved to the CPU cluster
    after = cost(job)
    assert after["GPU node time"] == pytest.approx(before["GPU node time"] - 2 * 6 / 60 * gpu_price)
    assert after["CPU node time"] > before["CPU node time"]
