"""Rolling a registered chat model out to an endpoint, blue/green: one procedure (``rollout``) over two targets.

    rollout   the procedure: keep a live slot that already serves the version, else deploy the idle slot, smoke-test
              it, move the traffic, retire the old slot; a failure rolls back
    local     the local target: one server process per slot, the traffic map and the router (chatft.local_server)
    azure     the Azure ML target: a managed online endpoint and one managed online deployment per slot

``components/deploy_endpoint/deploy_endpoint.py`` picks the target from its arguments and owns the smoke test.
"""
