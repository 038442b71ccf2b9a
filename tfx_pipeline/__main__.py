"""`python -m tfx_pipeline {run,compile,report}`: the same as `funnelstack run|compile|report`."""

import sys

from tfx_pipeline import quiet

# Before TensorFlow is imported: its start-up lines go to the run log, not the terminal.
if not quiet.verbose_requested(sys.argv):
    quiet.install()

from tfx_pipeline.cli import main  # noqa: E402

sys.exit(main())
