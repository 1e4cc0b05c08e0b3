"""Reading DICOM and reading/writing the cohort store."""
