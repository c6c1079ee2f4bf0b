"""A tagging job on a multi-node Ray cluster on 127.0.0.1, run as its own process (the
test session's own Ray stays untouched): ``python -m tests.fleet SPEC.json``.

The cluster (``ray.cluster_utils.Cluster``: one raylet per node): a head that runs the
driver, "inference" nodes whose logical GPU stands in for a real one, and CPU-only decode
nodes labelled ``raytag/role=decode``. With ``kill_decode_node`` set, one decode node's
raylet is SIGKILLed once the first predictions are written, and (unless
``replace_killed_node`` is false) a fresh decode node joins, as an autoscaler would replace
a lost spot node. What Ray recorded (nodes, actors and the
nodes they ran on) and the run's summaries go to ``SPEC["result"]``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from raytag.tagging import TagOptions, tag_catalogue
from raytag.tagging.options import DECODE_ROLE, ROLE_LABEL

INFERENCE = {ROLE_LABEL: "inference"}
DECODE = {ROLE_LABEL: DECODE_ROLE}


def main(spec: dict[str, Any]) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    node_args = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1, labels=INFERENCE, **node_args)
    decoders = [cluster.add_node(num_cpus=1, labels=DECODE, **node_args) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    roles = {n["NodeID"]: n["Labels"].get(ROLE_LABEL, "head") for n in ray.nodes()}
    result: dict[str, Any] = {"killed": None}

    def run() -> None:
        try:
            summaries = tag_catalogue(
                spec["manifest"], spec["models"], spec["output"], TagOptions(**spec["options"])
            )
            result["summaries"] = [s.record for s in summaries]
        except Exception as error:  # reported to the test
            result["error"] = repr(error)

    job = threading.Thread(target=run)
    job.start()
    if spec.get("kill_decode_node"):
        result["killed"] = _kill_when_tagging(decoders[0], Path(spec["output"]), job)
        if result["killed"] and spec.get("replace_killed_node", True):
            new = cluster.add_node(num_cpus=1, labels=DECODE, **node_args)
            roles[new.node_id] = DECODE_ROLE
    job.join(timeout=spec.get("timeout_s", 400))
    result["finished"] = not job.is_alive()
    result["roles"] = roles
    result["actors"] = [
        {"class": a["ActorClassName"], "node": a["Address"]["NodeID"],
         "restarts": a["NumRestarts"], "state": a["State"]}
        for a in ray._private.state.actors().values()
    ]  # fmt: skip
    Path(spec["result"]).write_text(json.dumps(result))
    if result["finished"]:
        ray.shutdown()
        cluster.shutdown()


def _kill_when_tagging(node: Any, output: Path, job: threading.Thread) -> str | None:
    """SIGKILL ``node``'s raylet once some predictions are written and while the job runs;
    its node id, or None when the job ended first."""
    deadline = time.monotonic() + 300
    while job.is_alive() and time.monotonic() < deadline:
        if any(output.glob("*/predictions/*.parquet")):
            raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
            raylet.send_signal(signal.SIGKILL)
            raylet.wait()
            return node.node_id
        time.sleep(0.05)
    return None


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
