"""luckystack.daemon: the shell around :mod:`luckystack.core`.

Config, folder watching, frame I/O, atomic outputs, the crop CSV, the CLI,
logging and sd_notify.
"""

import os as _os

# The pipeline's matrix products are small (tens to hundreds of rows). A
# multi-threaded BLAS spends more time waking its threads than computing,
# and competes with the frame decoding for the cores: measured 0.4 ms with
# one thread vs 1.7 ms with the default on a 2-core machine. Set before
# numpy is first imported by the application; a user's explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
