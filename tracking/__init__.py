"""What is remembered: MLflow experiments and runs, and (later) selection, reports and export.

`tracking` knows MLflow and files, never models or Ray.
"""
