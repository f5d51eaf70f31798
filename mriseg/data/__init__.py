"""Reading scans into axial volumes in scanner space (raster, DICOM, NIfTI), the Kaggle LGG layout,
input checks and brain extraction.
"""
