"""The core's file I/O: what happens between the file system and the engines.

- :mod:`.inputs`: listing the input tree and reading inputs safely (folder descriptors, no link
  followed, regular files only, read whole within :class:`.inputs.InputLimits`);
- :mod:`.outputs`: naming outputs below the output folder and writing them atomically;
- :mod:`.durability`: making outputs durable, one file-system sync per chunk;
- :mod:`.quarantine`: failed inputs kept apart with their reason, privately and atomically;
- :mod:`.records`: result files written one whole JSON line at a time;
- :mod:`.batch`: the batch runner (one record per input), over :mod:`.workers`.

Every directory entry a run sees gets exactly one record. ``ok`` and ``skipped`` (a regular
file that is not DICOM) are the benign outcomes; everything else is ``failed`` with a reason:
links of every kind (they are never followed), FIFOs, sockets, devices, folders that cannot be
listed, files that vanish or change while read, files over a bound. A run with a failed record
exits 1 (the CLI), so it never looks clean while an input was left unprocessed.
"""
