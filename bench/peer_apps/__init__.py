"""The same model.onnx served by the servers a user would pick instead (bench/peers.py starts them, each in its own
virtual environment); common.py is the model code they share: the contract's preprocessing and onnxruntime."""
