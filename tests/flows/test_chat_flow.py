"""flows/chat: the DAG wires the tool and the connection as Prompt Flow expects; the tool chats with a real endpoint.

promptflow itself is not installed in the project's venv (flows/chat/README.md says why), so the DAG is checked
against the tool's real signature here, and the tool runs on its fallback ``@tool`` / ``CustomConnection``.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.components import load_script
from tests.helpers.servers import component_server

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "flows" / "chat"


@pytest.fixture(scope="module")
def dag() -> dict:
    return yaml.safe_load((FLOW / "flow.dag.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tool_module():
    return load_script("chat_endpoint_under_test", FLOW / "chat_endpoint.py")


def test_dag_is_a_chat_flow(dag):
    question = dag["inputs"]["question"]
    assert question["type"] == "string" and question["is_chat_input"]
    assert dag["inputs"]["chat_history"]["type"] == "list" and dag["inputs"]["chat_history"]["is_chat_history"]
    answer = dag["outputs"]["answer"]
    assert answer["is_chat_output"] and answer["type"] == "string"
    referenced = re.fullmatch(r"\$\{(\w+)\.output\}", answer["reference"]).group(1)
    assert referenced in {node["name"] for node in dag["nodes"]}
    requirements = FLOW / dag["environment"]["python_requirements_txt"]
    assert "requests==" in requirements.read_text()


def test_dag_node_matches_the_tool_signature(dag, tool_module):
    (node,) = dag["nodes"]
    assert node["type"] == "python" and node["source"]["type"] == "code"
    assert (FLOW / node["source"]["path"]).resolve() == (FLOW / "chat_endpoint.py").resolve()
    signature = inspect.signature(tool_module.chat_endpoint)
    required = {name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    assert set(node["inputs"]) <= set(signature.parameters)  # nothing the tool does not take
    assert required <= set(node["inputs"])  # nothing it needs is missing
    assert node["inputs"]["question"] == "${inputs.question}"
    assert node["inputs"]["chat_history"] == "${inputs.chat_history}"
    # Prompt Flow resolves a connection input by the parameter's annotation.
    assert signature.parameters["connection"].annotation is tool_module.CustomConnection


def test_connection_template_holds_endpoint_and_a_placeholder_key(dag):
    connection = yaml.safe_load((FLOW / "connection.yaml").read_text(encoding="utf-8"))
    (node,) = dag["nodes"]
    assert node["inputs"]["connection"] == connection["name"]
    assert connection["type"] == "custom"
    assert connection["configs"]["endpoint"].endswith("/score")
    assert set(connection["secrets"]) == {"key"}  # the key is a secret, not a config
    assert re.fullmatch(r"<[a-z-]+>", connection["secrets"]["key"])  # a placeholder, never a real key


def test_history_becomes_messages_in_order(tool_module):
    history = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello!"}}]
    assert tool_module.to_messages(history, "Reset?", "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Reset?"},
    ]
    with pytest.raises(ValueError, match=r"chat_history\[1\] must look like"):
        tool_module.to_messages([*history, {"question": "no inputs key"}], "Reset?")


@pytest.fixture(scope="module")
def endpoint(tiny_llama_dir, tmp_path_factory):
    """score.py served from components/deploy_endpoint (chatft through PYTHONPATH) on a free loopback port."""
    root = tmp_path_factory.mktemp("flow_endpoint")
    model_dir = root / "chat-ft" / "1"  # name/version, as the server expects of AZUREML_MODEL_DIR
    model_dir.parent.mkdir()
    model_dir.symlink_to(tiny_llama_dir, target_is_directory=True)
    with component_server(model_dir, home=root) as running:
        yield running


@pytest.mark.slow
def test_tool_sends_the_seed_payload_with_history_and_returns_the_output(tool_module, endpoint):
    import requests

    connection = tool_module.CustomConnection(configs={"endpoint": endpoint["url"]}, secrets={"key": "test-key"})
    history = [{"inputs": {"question": "My internet drops."}, "outputs": {"answer": "Since when?"}}]
    answer = tool_module.chat_endpoint(
        connection, "How do I restart my router?", history, temperature=0.0, max_new_tokens=12
    )
    assert isinstance(answer, str)
    # The same conversation posted by hand (greedy, so deterministic) gets the same answer: the tool sent the
    # history, in order, in the seed's format.
    direct = {
        "input_data": {
            "input_string": tool_module.to_messages(history, "How do I restart my router?"),
            "parameters": {"temperature": 0.0, "max_new_tokens": 12},
        }
    }
    assert requests.post(endpoint["url"], data=json.dumps(direct), timeout=60).json()["output"] == answer


@pytest.mark.slow
def test_tool_reports_the_endpoints_refusal(tool_module, endpoint):
    connection = tool_module.CustomConnection(configs={"endpoint": endpoint["url"]}, secrets={"key": "test-key"})
    with pytest.raises(tool_module.EndpointError, match=r"HTTP 400: .*max_new_tokens=0 is out of range"):
        tool_module.chat_endpoint(connection, "Hi", [], max_new_tokens=0)


def test_readme_states_the_retirement_and_the_alternative():
    readme = (FLOW / "README.md").read_text(encoding="utf-8")
    assert "2026-04-20" in readme and "2027-04-20" in readme and "read-only" in readme
    assert 'OpenAI(base_url="http://127.0.0.1:8890/v1"' in readme and "stream=True" in readme
