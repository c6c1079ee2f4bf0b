"""`ray job submit --working-dir . -- python jobs/tag.py --manifest M --model MODEL --output O`

The same options as `raytag tag --help`. Inside a Ray job, RAY_ADDRESS is set, so tagging
joins the job's cluster; run directly, it starts a local Ray. Rerun the same command to
resume after a failure: only the rows missing from --output are tagged.
"""

from raytag.cli import tag_command

if __name__ == "__main__":
    tag_command()
