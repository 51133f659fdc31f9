"""Serving the chat model: the request contract, generation and batching, the serving settings, monitoring.

``components/deploy_endpoint/score.py`` is a thin ``init()`` / ``run()`` adapter over these modules, so the same
code answers in azureml-inference-server-http (locally and on Azure ML) and in the registered MLflow pyfunc:

    app          the request flow: accept, answer, the JSON or event-stream response, the data collectors
    contract     what a request may hold (both shapes), parsed into a ``ChatRequest``; ``RequestError`` for 4xx
    generation   ``ChatGenerator`` (tokenizer + model, content tokenized as text) and ``MicroBatcher``
                 (concurrent requests share one generate() call; per-row streaming and cancellation)
    settings     serving.json: workers, threads, batching, limits, Azure's request settings
    monitoring   one JSON line per request (local request log, and the server log / Application Insights)
    launch       a code folder staged like a deployment's, its server started on loopback and awaited healthy
"""
