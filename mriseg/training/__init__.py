"""Training, weight averaging, ensembling, and exporting a tuned weights folder with its model card.
"""
