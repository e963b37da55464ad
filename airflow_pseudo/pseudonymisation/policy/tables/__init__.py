"""Tables generated from the DICOM standard's published data, one generator each in ``tools/``."""
