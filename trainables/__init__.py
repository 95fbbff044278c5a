"""What one trial does: data, models, the saturation penalty, the training loop, the Ray trainable.

Everything here except `trainable.py` is free of Ray and MLflow, so it can be tested and
benchmarked on its own.
"""
