"""`ray job submit --working-dir . -- python jobs/tag.py --manifest M --model A --output O`

The same options as `raytag tag --help` (repeat --model for several models). Inside a Ray
job, RAY_ADDRESS is set, so tagging joins the job's cluster; run directly, it starts a
local Ray. Rerun the same command to resume after a failure: only the rows some model's
folder in --output lacks are decoded.
"""

import sys

from raytag.cli import main

if __name__ == "__main__":  # through raytag's group: its errors become one line, as in the CLI
    main(["tag", *sys.argv[1:]], prog_name="raytag")
