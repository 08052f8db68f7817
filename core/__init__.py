"""luckystack.core: pure image processing on numpy arrays.

No file I/O, no logging, no threads, no module globals; never imports
``luckystack.daemon``.
"""
