"""Azure Functions entry point (Python v2 programming model): Event Grid → retrain_handler.handle_event.

Deployed by ``infra/retrain_function/package.sh`` together with the project code it imports; the app, its identity
and the Event Grid subscription come from ``infra/modules/function_app.bicep`` and ``event_grid.bicep``.
"""

from __future__ import annotations

import logging

import azure.functions as func
from retrain_handler import handle_event

app = func.FunctionApp()


@app.function_name("retrain_on_new_data")
@app.event_grid_trigger(arg_name="event")
def retrain_on_new_data(event: func.EventGridEvent) -> None:
    logging.info("Event %s: %s %s", event.id, event.event_type, event.subject)
    # An exception fails the invocation: Event Grid retries it (24 h) and then dead-letters the event.
    handle_event(event.event_type, event.subject)
