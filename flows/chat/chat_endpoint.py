"""Prompt Flow tool: one chat turn against the fine-tuned model's endpoint, in the seed's request format.

The flow's question and history become ``{"input_data": {"input_string": [...], "parameters": {...}}}``, posted to
the URL in the custom connection's ``endpoint`` config with its ``key`` secret as a bearer token (what an Azure ML
managed online endpoint with key auth expects; the local server ignores it). The reply's ``output`` is the answer.
The endpoint's contract, with every parameter's default and range, is in components/deploy_endpoint/score.py.

promptflow cannot be installed beside this project's pinned packages (see README.md), so without it the tool
falls back to a plain ``@tool`` and a ``CustomConnection`` with the same ``configs`` / ``secrets`` dictionaries:
the tests call the same function against a real local endpoint.
"""

# No ``from __future__ import annotations``: Prompt Flow reads the tool's inputs and the connection type from the
# signature's real annotations.
try:
    from promptflow.connections import CustomConnection
    from promptflow.core import tool
except ImportError:  # the project's venv: the tool stays importable and callable as is

    def tool(func):
        return func

    class CustomConnection:
        """Stand-in for promptflow.connections.CustomConnection: public ``configs`` and secret ``secrets``."""

        def __init__(self, secrets: dict[str, str], configs: dict[str, str] | None = None):
            self.secrets = dict(secrets)
            self.configs = dict(configs or {})


REQUEST_TIMEOUT_S = 300  # a long answer on a CPU endpoint: 1024 tokens at ~18 tokens/s is about a minute


class EndpointError(RuntimeError):
    """The endpoint refused the request or could not be reached; the message quotes what it said."""


def to_messages(chat_history: list, question: str, system_prompt: str = "") -> list[dict[str, str]]:
    """Prompt Flow's chat history (``[{"inputs": {"question": ...}, "outputs": {"answer": ...}}, ...]``) + question
    as chat messages, oldest first."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for number, turn in enumerate(chat_history or []):
        try:
            user, assistant = turn["inputs"]["question"], turn["outputs"]["answer"]
        except (KeyError, TypeError):
            raise ValueError(
                f'chat_history[{number}] must look like {{"inputs": {{"question": ...}}, "outputs": {{"answer": ...}}}}'
            ) from None
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return [*messages, {"role": "user", "content": question}]


@tool
def chat_endpoint(
    connection: CustomConnection,
    question: str,
    chat_history: list = None,  # plain types: Prompt Flow maps them to its input types
    system_prompt: str = "",
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
) -> str:
    import requests

    endpoint = connection.configs.get("endpoint")
    if not endpoint:
        raise ValueError('the connection has no "endpoint" config; set it to the scoring URL (…/score)')
    headers = {"Content-Type": "application/json"}
    if connection.secrets.get("key"):
        headers["Authorization"] = f"Bearer {connection.secrets['key']}"
    body = {
        "input_data": {
            "input_string": to_messages(chat_history, question, system_prompt),
            "parameters": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens},
        }
    }
    try:
        response = requests.post(endpoint, json=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as err:
        raise EndpointError(f"{endpoint} could not be reached: {err}") from None
    try:
        reply = response.json()
    except ValueError:
        reply = None
    if response.status_code != 200 or not isinstance(reply, dict) or not isinstance(reply.get("output"), str):
        said = reply.get("message") if isinstance(reply, dict) and reply.get("message") else response.text[:300]
        raise EndpointError(f"{endpoint} answered HTTP {response.status_code}: {said}")
    return reply["output"]
