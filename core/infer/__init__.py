"""Inference: Segment Raster (``segment``: open inputs -> plan tiles -> run -> write), its tile
plan and the step that segments one window given the network (``plan``), the threaded
read/infer/write pipeline (``pipeline``), which runtime runs the model, ONNX Runtime or PyTorch
(``runtime``), its input checks (``inputs``, ``band_plan``), and label-free segments (k-means
over embeddings, ``segments``).
"""
