"""The lab: benchmarks, studies, the demo and its report, and the real-face evaluation sets.

Nothing in the library imports this package; it sits above the command lines and reads the photos that live
outside the project (``../shared``)."""
