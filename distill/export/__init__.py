"""ONNX export (`onnx`, needs torch) and torch-free CPU serving (`runtime`, `serve`).

Nothing is imported here: `import distill.export.runtime` must not pull in torch.
"""
