"""Azure Functions entry point (Python v2 programming model): the retraining queue → retrain_handler.handle_message.

Event Grid puts each blob-created event on the queue named by the app setting CHATFT_RETRAIN_QUEUE (both made by
``infra/modules/retrain_queue.bicep`` and ``event_grid.bicep``); host.json has the host take one message at a time.
Deployed by ``infra/retrain_function/package.sh`` together with the project code it imports.
"""

from __future__ import annotations

import logging

import azure.functions as func
from retrain_handler import handle_message

app = func.FunctionApp()


@app.function_name("retrain_on_new_data")
# "%...%" reads the queue's name from the app setting, so it is written once, in the Bicep. The host storage
# connection (identity-based, AzureWebJobsStorage__*) is the account that holds the queue.
@app.queue_trigger(arg_name="message", queue_name="%CHATFT_RETRAIN_QUEUE%", connection="AzureWebJobsStorage")
def retrain_on_new_data(message: func.QueueMessage) -> None:
    logging.info("Message %s (dequeued %s time(s))", message.id, message.dequeue_count)
    # An exception fails the invocation: the queue makes the message visible again (host.json visibilityTimeout)
    # and after maxDequeueCount attempts moves it to <queue>-poison, where a missed retraining stays visible.
    handle_message(message.get_body())
