"""From a study to something to ship: ``pick`` (the best model for a target), full-size
training (``search train``), export (timm folder, ONNX) and the model card."""
