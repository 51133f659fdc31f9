"""Shared code for the fine-tuning components: chat schema, JSONL IO, model loading.

Components import it through the Azure ML ``additional_includes`` mechanism (the folder is copied next
to each component's script), so nothing here may import from ``pipelines/``.
"""
