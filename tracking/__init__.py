"""What is remembered: the MLflow store, the sweep's parent and trial runs, the metric-name
schema, selection, the sweep report and export.

`tracking` knows MLflow and files, never models or Ray.
"""
