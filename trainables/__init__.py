"""What one trial does: its settings, data, models, the saturation penalty, the training loop,
the attacks and their evaluation, and the Ray trainable that glues them to Ray and MLflow.

Everything here except `trainable.py` is free of Ray and MLflow, so it can be tested and
benchmarked on its own.
"""
