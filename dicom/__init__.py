"""The DICOM face: DICOMweb routes and DIMSE SCP, translating to the core."""
