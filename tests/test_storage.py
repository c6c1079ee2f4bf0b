"""storage: local and s3:// URIs through fsspec and pyarrow against a real SeaweedFS server."""

import pyarrow as pa
import pyarrow.parquet as pq

from raytag.storage import arrow_filesystem, filesystem


def test_roundtrip(s3_bucket):
    fs, path = filesystem(s3_bucket + "/a/b.txt")
    with fs.open(path, "wb") as f:
        f.write(b"hello")
    assert fs.cat(path) == b"hello"
    afs, apath = arrow_filesystem(s3_bucket + "/t.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), apath, filesystem=afs)
    assert pq.read_table(apath, filesystem=afs).num_rows == 2
