"""A base for in-process azure-core transports in tests: no connection to open, close or pool.

Subclasses implement only ``send(request, **kwargs)`` and answer from their own state (never the network).
"""

from __future__ import annotations

from azure.core.pipeline.transport import HttpTransport


class InProcessTransport(HttpTransport):
    def open(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass
