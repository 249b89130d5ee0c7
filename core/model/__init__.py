"""Models: the self-contained model file (``modelfile``), the PyTorch network wrapper that runs
batches on a device (``network``), device choice (``device``), ONNX: export and the export cache
(``export``), ONNX metadata, MapSeg's and Deepness's (``onnxmeta``), the ONNX Runtime session and
network (``onnxnet``), the label-free clustering (filter bank, k-means segmenter) and the
model_info command line (``info``).
"""
