"""Two-phase transfer-learning trainer: python -m training {train,export,predict,evaluate}."""
