"""TagOptions: every setting of a tagging run, and their resolution against the cluster.

Only ``max_patches`` (the long-track policy) changes what a track's scores are;
``thresholds`` decides its ``tags``, and ``top_k``, ``embedding`` and ``passthrough`` what
else a prediction row holds. The rest decide how the run is cut into work. ``None`` means
"decide from the cluster": GPU and CPU-only clusters want different layouts
(:meth:`TagOptions.resolved`; the measurements behind each default are in
docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from raytag.settings import none_if_zero, require_at_least, setting
from raytag.tagging.output import TagError

log = logging.getLogger(__name__)

# The node label that makes a node part of the decode fleet: `ray start --labels
# raytag/role=decode`, or `labels:` of a node type in cluster.yaml.
ROLE_LABEL, DECODE_ROLE = "raytag/role", "decode"
DECODE_ON = ("auto", "decode-nodes", "anywhere")

# Rows per Ray Data execution, automatic: Ray Data keeps bookkeeping for every block it
# has produced in the driver until an execution ends. Executions are sized to the cluster,
# so each runs for minutes (a drain and a new actor pool between two cost seconds), and
# capped, so the driver's memory stays bounded whatever the manifest's size.
_ROWS_PER_EXECUTION_PER_CPU, _MAX_ROWS_PER_EXECUTION = 12_500, 1_000_000


def column_list(text: str | None) -> tuple[str, ...] | None:
    """For ``--passthrough a,b``: the names, in order; "" for none, None (absent) for all."""
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


@dataclass(frozen=True)
class TagOptions:
    """What a tagging run writes and how it is cut into work (see the module docstring).
    Each field is an option of ``raytag tag`` (:mod:`raytag.settings`); None: decided by
    :meth:`resolved`."""

    max_patches: int | None = setting(
        32,
        "Evenly spaced patches per track (0: all); bounds memory for long tracks.",
        parse=none_if_zero,
    )
    top_k: int = setting(5, "Tags kept in top_tags.")
    embedding: bool = setting(False, "Write the embedding.")
    thresholds: tuple[str, ...] = setting(
        factory=tuple,
        help="A thresholds JSON file ({tag: threshold}, or the form raytag calibrate "
        "stores) that decides the tags column instead of the model's own thresholds. With "
        "several --model: MODEL=FILE, MODEL as given to --model, once per model overridden.",
        parse=tuple,
        multiple=True,
    )
    passthrough: tuple[str, ...] | None = setting(
        None,
        "Manifest columns the prediction rows carry, comma-separated (default: all; '': "
        "none); track_id and uri always. One named like an output column (duration_s, "
        "scores, tags, ...) is carried as input_NAME.",
        parse=column_list,
    )
    decode_batch_size: int = setting(8, "Tracks per decode task.")
    decode_on: str = setting(
        "auto",
        "Where tracks are decoded: decode-nodes (only nodes labelled raytag/role=decode; "
        "an autoscaler adds them), anywhere (every node's CPUs, GPU nodes' too), or auto: "
        "decode-nodes when the cluster has one, else anywhere. While decoding is on decode "
        "nodes, model actors stay off them.",
    )
    # Half float32's bytes through the object store; scores move by less than 1e-4
    # (measured in docs/benchmarks.md).
    pcm16: bool = setting(
        True, "Patches cross the object store as 16-bit PCM with a per-track scale."
    )
    # Actors where GPUs run the model, where decoding is the bottleneck: each actor keeps
    # its next block queued, so no core idles between blocks while the driver schedules.
    # Tasks on CPU-only clusters, where decoding is a minor share of the work and comes and
    # goes beside the model.
    decode_actors: bool | None = setting(
        None,
        "Decode in long-lived actors, not tasks (default: actors with GPUs, tasks without).",
    )
    decode_tasks: int | None = setting(
        None,
        "Concurrent decode tasks, or actors (default: on decode nodes, one per decode "
        "node CPU; else with GPUs every CPU the model actors leave but one; without, one "
        "per 4 CPUs).",
    )
    # 1 where GPUs do the model (decoding is the bottleneck there); a fraction on CPU-only
    # clusters, where the model is most of the work and every core should run it.
    decode_cpus: float | None = setting(
        None, "CPUs a decode task reserves (default: 1 with GPUs, 0.25 on CPU-only clusters)."
    )
    # Ray's memory resource, so a node never runs more decodes than fit. Declaring it also
    # keeps decoding out of the model actors: Ray Data fuses stages whose resource requests
    # are equal.
    decode_memory_mb: int = setting(1024, "Memory reserved per decode task.")
    predict_batch_size: int = setting(16, "Tracks per model call.")
    # On CPU, larger batches were barely faster for several times the activations' memory.
    patch_batch_size: int | None = setting(
        None, "Patches per forward pass (default: 256 on GPU, 8 on CPU)."
    )
    actors: int | None = setting(None, "Model replicas (default: one per GPU, else per CPU).")
    # Never more threads than CPUs, so that replicas do not oversubscribe the cores.
    cpus_per_actor: float | None = setting(
        None,
        "CPUs an actor reserves; CPU actors run that many torch threads, at least 1 "
        "(default: 1 on GPU nodes; on CPU-only clusters 0.75, less on 4 CPUs or fewer so that "
        "a whole CPU stays free, 0.375 on 2: one single-threaded replica per core).",
    )
    use_gpu: bool | None = setting(None, "Default: GPUs if the cluster has any.", flag="--gpu")
    bf16: bool = setting(True, "bf16 autocast on GPU.")
    # Off by default, so that CPU outputs stay float32's.
    cpu_bf16: bool = setting(
        False,
        "bf16 autocast on CPU actors too: faster on CPUs with bf16 units (AVX512-BF16, AMX), "
        "likely slower elsewhere; scores move a little (measured in docs/benchmarks.md).",
    )
    # An actor whose compile fails falls back to eager. Off by default: it measured no
    # faster end to end on CPUs and slower on a GPU.
    compile: bool = setting(
        False,
        "torch.compile the model in each actor: a compile per actor, and a C++ compiler on "
        "CPU nodes (measured in docs/benchmarks.md).",
    )
    rows_per_file: int = setting(
        1000, "Rows per write task: at most one predictions and one errors file each."
    )
    rows_per_execution: int | None = setting(
        None,
        "Pending rows per Ray Data execution; bounds the driver's memory (default: 12,500 "
        "per CPU, at most 1,000,000).",
    )

    def __post_init__(self) -> None:
        require_at_least(self, 1, "decode_batch_size", "predict_batch_size", "top_k")
        require_at_least(
            self, 1, "patch_batch_size", "actors", "decode_tasks", "rows_per_execution",
            optional=True,
        )  # fmt: skip
        require_at_least(self, 0, "cpus_per_actor", "decode_cpus", optional=True)
        if self.max_patches is not None and self.max_patches < 1:
            raise ValueError("max_patches must be None (all patches) or >= 1")
        if self.decode_on not in DECODE_ON:
            raise ValueError(f"decode_on must be one of {', '.join(DECODE_ON)}")

    def resolved(self, cluster: dict[str, float], decode_node_cpus: float = 0.0) -> TagOptions:
        """Every automatic option decided for a cluster (``ray.cluster_resources()``, and
        the CPUs of its nodes labelled ``raytag/role=decode``).

        Decoding goes to the decode nodes when asked, or (``auto``) when there are any:
        one decode actor of 1 CPU per CPU there, and the model actors never go there.
        Without decode nodes, with GPUs: one actor per GPU, 256-patch forwards, and decode
        actors of 1 CPU each on every CPU but one (the driver, the steps before decoding
        and the writes run there). CPU only: one single-threaded actor per CPU (measured
        faster than fewer multi-threaded ones), 8-patch forwards, and decode tasks at 0.25
        CPU, at most one per four CPUs: decoding is a minor share of the work there. The
        actors reserve 0.75 of a logical CPU each, less on small nodes, so that a whole one
        stays free beside the full pool: the step that cuts pending rows into decode blocks
        runs at Ray Data's 1 CPU and would otherwise wait for good (see
        :func:`raytag.tagging.pipeline.tag_rows`).
        Either way, executions of 12,500 pending rows per CPU, at most a million.
        """
        cpus = max(1, int(cluster.get("CPU", 1)))
        use_gpu = self.use_gpu if self.use_gpu is not None else cluster.get("GPU", 0) >= 1
        decode_nodes = self.decode_on == "decode-nodes" or (
            self.decode_on == "auto" and decode_node_cpus > 0
        )
        model_cpus = max(1, int(cpus - decode_node_cpus)) if decode_nodes else cpus
        if use_gpu:
            defaults = {
                "actors": max(1, int(cluster.get("GPU", 1))),
                "cpus_per_actor": 1.0,
                "patch_batch_size": 256,
                "decode_cpus": 1.0,
                "decode_actors": True,
            }
        else:  # cpus_per_actor follows from the rest, below
            defaults = {
                "actors": model_cpus,
                "patch_batch_size": 8,
                "decode_cpus": 0.25,
                "decode_actors": False,
                "decode_tasks": max(1, cpus // 4),
            }
        if decode_nodes:  # CPUs that do nothing else: an actor per CPU, blocks queued
            defaults.update(decode_cpus=1.0, decode_actors=True, decode_tasks=None)
            if self.decode_tasks is None:
                if decode_node_cpus < 1:
                    raise TagError(
                        f"--decode-on decode-nodes and no node labelled {ROLE_LABEL}="
                        f"{DECODE_ROLE} is up: give --decode-tasks, the decode actors to ask "
                        "an autoscaler for"
                    )
                decode_cpus = self.decode_cpus or 1.0
                defaults["decode_tasks"] = max(1, int(decode_node_cpus // decode_cpus))
        defaults["rows_per_execution"] = min(
            _MAX_ROWS_PER_EXECUTION, _ROWS_PER_EXECUTION_PER_CPU * cpus
        )
        chosen = {
            k: v if getattr(self, k) is None else getattr(self, k) for k, v in defaults.items()
        }
        where = "decode-nodes" if decode_nodes else "anywhere"
        resolved = replace(self, use_gpu=use_gpu, decode_on=where, **chosen)
        if resolved.cpus_per_actor is None:  # CPU only: one whole CPU left for the split
            decoding = 0.0 if decode_nodes else resolved.decode_tasks * resolved.decode_cpus
            spare = model_cpus - 1 - decoding
            resolved = replace(
                resolved, cpus_per_actor=max(0.25, min(0.75, spare / resolved.actors))
            )
        if resolved.decode_tasks is None:  # GPUs: every CPU the model actors leave, but one
            spare = cpus - resolved.actors * resolved.cpus_per_actor - 1
            fit = int(spare // resolved.decode_cpus) if resolved.decode_cpus else cpus
            resolved = replace(resolved, decode_tasks=max(1, fit))
            if fit < 1 and self.decode_actors is None:  # no room to hold a decode actor
                resolved = replace(resolved, decode_actors=False)
        # Decode tasks beside GPU actors come and go: only held reservations can stall.
        if (resolved.decode_actors or not use_gpu) and resolved.may_stall(cluster.get("CPU", 0)):
            log.warning(
                "model actors reserve %d x %.2f of %s CPUs and decoding %.2f: Ray Data may "
                "find no CPU for the stages before the model and stall. Leave a whole CPU "
                "spare (--actors x --cpus-per-actor + decoding <= CPUs - 1)",
                resolved.actors,
                resolved.cpus_per_actor,
                cluster.get("CPU", 0),
                resolved.decode_reserved_cpus,
            )
        return resolved

    def threshold_files(self, model_uris: Sequence[str]) -> list[str | None]:
        """The ``thresholds`` file of each of ``model_uris`` (None: the model's own): a
        ``MODEL=FILE`` names its model; a bare FILE is for the only model of a run."""
        files: dict[str, str] = {}
        for given in self.thresholds:
            named = [uri for uri in model_uris if given.startswith(f"{uri}=")]
            if named:
                uri = max(named, key=len)
                file = given[len(uri) + 1 :]
            elif len(model_uris) == 1:
                uri, file = model_uris[0], given
            else:
                raise TagError(
                    f"--thresholds {given!r}: with several --model, give MODEL=FILE, MODEL "
                    f"exactly as given to --model (one of {', '.join(model_uris)})"
                )
            if uri in files:
                raise TagError(f"--thresholds given twice for {uri}")
            files[uri] = file
        return [files.get(uri) for uri in model_uris]

    @property
    def decode_label_selector(self) -> dict[str, str] | None:
        """Where decode tasks may run (resolved options)."""
        return {ROLE_LABEL: DECODE_ROLE} if self.decode_on == "decode-nodes" else None

    @property
    def model_label_selector(self) -> dict[str, str] | None:
        """Where model actors may run (resolved options): never on the decode fleet."""
        return {ROLE_LABEL: f"!{DECODE_ROLE}"} if self.decode_on == "decode-nodes" else None

    @property
    def decode_reserved_cpus(self) -> float:
        """CPUs decoding holds for the whole run: every actor's, or one task's at least."""
        decode_cpus = self.decode_cpus or 0.0
        return decode_cpus * (self.decode_tasks or 1) if self.decode_actors else decode_cpus

    def may_stall(self, cpus: float) -> bool:
        """Whether the full model pool starves the other stages of a ``cpus``-CPU cluster.

        The pool and decoding must leave one whole CPU: the step that cuts pending rows
        into decode blocks runs at Ray Data's default of 1 CPU. Layouts that leave less
        are tagged with a pool that grows from one actor and shrinks when idle, so that
        the split gets its turn (see :func:`raytag.tagging.pipeline.tag_rows`); even so,
        a single actor holding all but a fraction of a CPU can stall a small node for good.
        """
        reserved = self.actors * self.cpus_per_actor + self.decode_reserved_cpus
        return reserved > cpus - 1
