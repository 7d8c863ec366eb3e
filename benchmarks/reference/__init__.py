"""Reference implementations run side by side with streamrec's models (issue 24, item 4).

The references are installed into their own virtual environment and run in subprocesses,
outside the project: nothing of theirs is vendored here. This package holds only the glue:
the data conversion (``atomic``), the driver that runs inside the reference's environment
(``recbole_driver``) and the benchmark that ties them together (``sasrec_recbole``).
"""
