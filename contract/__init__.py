"""The artifact contract between training and serving, in code: the one place both halves import.

    artifacts/<name>/<version>/  model.onnx   input "images" uint8 [N, S, S, 3] RGB, already resized and centre-cropped;
                                              outputs "logits" and "probabilities" float32 [N, C]
                                 model.json   contract.card.ModelCard (classes, S, R, interpolation, sha256, metrics...)
                                 report/      the evaluation and data reports
    artifacts/<name>/LATEST      the version served (contract.publish)

Torch-free on purpose: the serving image installs numpy, Pillow and pydantic, never torch.
"""
