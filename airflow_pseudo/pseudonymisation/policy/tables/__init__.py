"""Tables generated from the DICOM standard and from reviewed sources, read by the policy."""
