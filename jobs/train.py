"""`ray job submit --working-dir . -- python jobs/train.py --manifest ... [options]`

The same options as `raytag train --help`. Inside a Ray job, RAY_ADDRESS is set, so
training joins the job's cluster; run directly, it starts a local Ray.
"""

from raytag.cli import train_command

if __name__ == "__main__":
    train_command()
