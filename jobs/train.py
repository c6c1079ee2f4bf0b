"""`ray job submit --working-dir . -- python jobs/train.py --manifest ... [options]`

The same options as `raytag train --help`. Inside a Ray job, RAY_ADDRESS is set, so
training joins the job's cluster; run directly, it starts a local Ray.
"""

import sys

from raytag.cli import main

if __name__ == "__main__":  # through raytag's group: its errors become one line, as in the CLI
    main(["train", *sys.argv[1:]], prog_name="raytag")
