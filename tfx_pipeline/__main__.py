import os
import sys

# Hide TensorFlow's C++ start-up chatter (CUDA probing on CPU hosts) unless asked for.
if "--verbose" not in sys.argv:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfx_pipeline.cli import main  # noqa: E402

sys.exit(main())
