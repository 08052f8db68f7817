"""luckystack.daemon: the shell around :mod:`luckystack.core`.

Config, folder watching, frame I/O, atomic outputs, the crop CSV, the CLI,
logging and sd_notify.
"""
