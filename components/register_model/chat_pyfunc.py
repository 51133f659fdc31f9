"""The registered model's MLflow pyfunc: the fine-tuned Hugging Face folder, answered by the endpoint's own code.

Saved by ``register_model.py`` as a model-from-code (``mlflow.pyfunc.save_model``, then uploaded as the run's
``model`` artifacts): MLflow stores this file with ``chatft`` as code (``chatft.serving`` holds the endpoint's
request contract and generator), and the merged model folder untouched as the ``merged_model`` artifact. So

    mlflow.pyfunc.load_model("models:/chat-ft/3").predict(
        {"input_data": {"input_string": [{"role": "user", "content": "Hi"}]}})

returns ``{"output": "..."}``, the same answer and the same validation as the deployed endpoint.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class ChatModel(PythonModel):
    # Requests are validated by parse_request, with the endpoint's messages; this tells MLflow (3.x) not to wrap
    # predict for type-hint validation, which would otherwise warn that predict has no type hints.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from chatft.serving.generation import ChatGenerator

        self.generator = ChatGenerator(context.artifacts["merged_model"])

    def predict(self, context, model_input, params=None):
        from chatft.serving.contract import parse_request

        messages, parameters = parse_request(model_input)
        return {"output": self.generator.reply(messages, parameters)}


mlflow.models.set_model(ChatModel())
