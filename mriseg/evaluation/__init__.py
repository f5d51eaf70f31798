"""Per-volume evaluation reports, robustness copies of the validation patients, speed benchmarks.
"""
