"""Evaluation: streamed confusion matrix and scores, object-level F1, reference alignment and
rasterisation, and the HTML report.
"""
