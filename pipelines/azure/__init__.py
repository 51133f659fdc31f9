"""Submit the pipeline object to Azure ML: one small module per concern.

    cli      the command-line flags shared by submit, preflight, schedule and retrain, and the exit codes
    client   the one MLClient factory (make submit, make preflight, pipelines/endpoint.py ...)
    plan     offline: data fingerprint, the pipeline, every environment/data/component version; the dry run
    assets   register what the plan lists, each only when its version does not exist yet
    submit   preflight → register → submit → follow the run to its end, with a documented exit code
    overrides  a JSON file of assumptions with a --pricing file merged over it
    serverless the Model-as-a-Service path (the service fine-tunes): a package of one module per step
    (pipelines/sdk_private.py is the one place that touches private azure-ai-ml attributes.)

A submission, in order: 1. plan (offline); 2. preflight (``pipelines/preflight/``: quota and cost); 3. register what
is missing; 4. submit, print the Studio URL, follow the run until it ends. ``--dry-run`` stops after 2 and writes the
resolved pipeline YAML and the plan of what would be created.

Nothing here runs against Azure in the tests: a real MLClient talks to a simulation of the REST API instead
(tests/helpers/azure_transport.py).
"""
