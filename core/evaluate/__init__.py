"""Evaluation: the reference put on the prediction's grid (``reference``), streamed confusion
matrix and scores (``evaluation``, ``metrics``), object-level F1 (``objects``), and the HTML
report (``report``).
"""
