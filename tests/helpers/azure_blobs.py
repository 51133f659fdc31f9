"""The workspace's default datastore and its blob container, as the REST simulation answers them: the datastore and
its secrets, pending uploads of code snapshots, and Put/Head/Get Blob on the storage account."""

from __future__ import annotations

import json
import re

from tests.helpers.azure_rest import STORAGE_ACCOUNT, WORKSPACE_ID, Recorded, Reply, fixture


class BlobStorage:
    """Mixed into ``AzureRestSimulation``: uses its ``blobs``, ``blob_metadata``, ``requests``, ``_workspace`` and
    ``_unexpected``."""

    def _datastore(self) -> dict:
        body = fixture("datastore.json")
        body["id"] = f"{WORKSPACE_ID}/datastores/workspaceblobstore"
        body["properties"]["accountName"] = STORAGE_ACCOUNT
        return body

    def _datastore_secrets(self, record: Recorded, match: re.Match) -> Reply:
        return Reply(200, fixture("datastore_secrets.json"))

    def _start_pending_upload(self, record: Recorded, match: re.Match) -> Reply:
        """Where a code snapshot goes: a SAS URI to a fresh container of the workspace's storage account."""
        body = fixture("pending_upload.json")
        upload_id = record.body.get("pendingUploadId") or f"upload-{len(self.requests)}"
        container = f"https://{STORAGE_ACCOUNT}.blob.core.windows.net/{upload_id}"
        reference = body["blobReferenceForConsumption"]
        reference["blobUri"] = container
        reference["storageAccountArmId"] = self._workspace()["properties"]["storageAccount"]
        reference["credential"]["sasUri"] = f"{container}?sv=2023-11-03&sr=c&sp=racwl&sig=simulated"
        body["pendingUploadId"] = upload_id
        return Reply(200, body)

    def _put_blob(self, record: Recorded, match: re.Match) -> Reply:
        """Put Blob (201), or Set Blob Metadata (``comp=metadata``, 200), as the Blob service REST API answers."""
        name = match["blob"]
        prefix = "x-ms-meta-"
        metadata = {k.lower()[len(prefix) :]: v for k, v in record.headers.items() if k.lower().startswith(prefix)}
        headers = {"ETag": '"0x8D0000000000000"', "Last-Modified": "Tue, 01 Dec 2026 12:00:00 GMT"}
        if record.query.get("comp") == "metadata":
            if name not in self.blobs:
                return Reply(404, None, {"x-ms-error-code": "BlobNotFound"})
            self.blob_metadata[name] = metadata
            return Reply(200, None, headers)
        if record.query.get("comp") or record.query.get("blockid"):  # SAS parameters (sv, sig, ...) are auth only
            return self._unexpected(record)
        self.blobs[name] = record.body if isinstance(record.body, bytes) else json.dumps(record.body).encode()
        self.blob_metadata[name] = metadata
        return Reply(201, None, headers)

    def _blob_headers(self, name: str) -> dict[str, str]:
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Length": str(len(self.blobs[name]))}
        headers.update({f"x-ms-meta-{k}": v for k, v in self.blob_metadata.get(name, {}).items()})
        return headers

    def _head_blob(self, record: Recorded, match: re.Match) -> Reply:
        if match["blob"] in self.blobs:
            return Reply(200, None, self._blob_headers(match["blob"]))
        return Reply(404, None, {"x-ms-error-code": "BlobNotFound"})

    def _get_blob(self, record: Recorded, match: re.Match) -> Reply:
        if match["blob"] in self.blobs:
            return Reply(200, self.blobs[match["blob"]], self._blob_headers(match["blob"]))
        return Reply(404, None, {"x-ms-error-code": "BlobNotFound"})
