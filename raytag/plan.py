"""`raytag plan`: the size of a tagging cluster, from measured costs.

A GPU tags its model ceiling (patches/s) times the share of it the pipeline reaches, over
the patches of a track. Feeding that rate takes its tracks/s times the CPU-seconds a
track's decoding costs, over the share of a decode CPU's time that goes into decoding;
decode nodes supply those CPUs. The measured inputs are the tables below, each with the
docs/benchmarks.md section it was measured in; GPUs not measured there are scaled from
the one that was, by dense bf16 tensor throughput, and marked estimated. Every input is an
option. How to read a plan and every assumption behind it: docs/capacity.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import click

from raytag.settings import SettingsCommand, build, setting

_H200_SECTION = "docs/benchmarks.md#tagging-on-the-h200-node-benchtaggingpy---device-cuda"


@dataclass(frozen=True)
class Measured:
    """A figure as docs/benchmarks.md writes it, and the section it is measured in."""

    value: float
    unit: str
    source: str


# The one GPU raytag has measured, and its model ceilings: bf16 forwards at batch 1,024,
# host copies included, the paper's full presets.
MEASURED_GPU = "H200"
MODEL_CEILINGS = {
    "spectrogram": Measured(15_724, "patches/s", _H200_SECTION + " (model ceiling)"),
    "waveform": Measured(26_485, "patches/s", _H200_SECTION + " (model ceiling)"),
}
# Decoding on the H200 node's CPUs, per row of its mixed inputs: the decode ceiling (16
# processes) and what the pipeline's decode actors spent (Arrow, object store, start-up).
# Their ratio is the share of a decode actor's CPU time that goes into the decode stage.
DECODE_CEILING = Measured(0.146, "CPU-s per track", _H200_SECTION + " (decode ceiling)")
DECODE_IN_PIPELINE = Measured(0.168, "CPU-s per track", _H200_SECTION + " (decode actors)")
_DECODE_SECTION = (
    "docs/benchmarks.md#decoding-the-ffmpeg-command-line-raytags-decode-the-decode-stage-"
    "benchdecodepy (decode stage, CPU VM)"
)
# The tagging job's decode stage, CPU-ms per 30-s stereo track by format (22.05-48 kHz):
# decode, resample, patches, 16-bit PCM, Arrow; a catalogue is planned as an equal mix.
DECODE_STAGE_MS = {
    "wav": Measured(27.8, "CPU-ms per 30-s track", _DECODE_SECTION),
    "flac": Measured(48.8, "CPU-ms per 30-s track", _DECODE_SECTION),
    "ogg": Measured(46.0, "CPU-ms per 30-s track", _DECODE_SECTION),
    "mp3": Measured(47.1, "CPU-ms per 30-s track", _DECODE_SECTION),
}


@dataclass(frozen=True)
class GpuNode:
    """A GPU worker node type: its instance, GPUs and vCPUs, and the GPU's dense bf16
    tensor TFLOPS from its spec sheet (None: unknown, so its ceiling must be given)."""

    gpu: str
    instance_type: str
    gpus: int
    vcpus: int
    bf16_tflops: float | None = None


# Dense (no sparsity) bf16 tensor TFLOPS: NVIDIA's H100 SXM and H200 datasheets (989,
# "1,979 with sparsity"); NVIDIA publishes none for the A10G, AWS's variant of the A10
# (125 on the A10's datasheet): 70 is the figure third-party spec tables give.
GPU_NODES = {
    "A10G": GpuNode("A10G", "g5.2xlarge", gpus=1, vcpus=8, bf16_tflops=70.0),
    "H100": GpuNode("H100", "p5.48xlarge", gpus=8, vcpus=192, bf16_tflops=989.0),
    "H200": GpuNode("H200", "p5en.48xlarge", gpus=8, vcpus=192, bf16_tflops=989.0),
}
DECODE_ON = ("decode-nodes", "anywhere")


def _pairs(given: tuple[str, ...], *, bare_key: str | None = None) -> dict[str, str]:
    """NAME=VALUE options; a bare VALUE is ``bare_key``'s where one is allowed."""
    pairs = {}
    for text in given:
        name, sep, value = text.rpartition("=")
        if not sep and bare_key is None:
            raise ValueError(f"{text!r} is not NAME=VALUE")
        pairs[name if sep else bare_key] = value
    return pairs


def _positive_floats(given: tuple[str, ...], bare_key: str | None = None) -> dict[str, float]:
    values = {name: float(v) for name, v in _pairs(given, bare_key=bare_key).items()}
    if any(v <= 0 for v in values.values()):
        raise ValueError("every value must be > 0")
    return values


def _decode_costs(given: tuple[str, ...]) -> dict[str, float]:
    return _positive_floats(given, bare_key="mixed")


def _gpu_nodes(given: tuple[str, ...]) -> dict[str, GpuNode]:
    nodes = {}
    for gpu, shape in _pairs(given).items():
        parts = shape.split(":")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts[1:]):
            raise ValueError(f"{gpu}={shape}: not INSTANCE:GPUS:VCPUS")
        known = GPU_NODES.get(gpu)
        tflops = known.bf16_tflops if known else None
        nodes[gpu] = GpuNode(gpu, parts[0], int(parts[1]), int(parts[2]), tflops)
    return nodes


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan is computed from; each field is an option of ``raytag plan``.
    Empty tables and None take the measured defaults above."""

    tracks: int = setting(10_000_000, "Tracks to tag.")
    gpu_types: tuple[str, ...] = setting(
        factory=tuple, help="GPU type to plan for; repeatable (default: every known one).",
        flag="--gpu-type", multiple=True, parse=tuple,
    )  # fmt: skip
    gpu_nodes: int | None = setting(None, "GPU nodes of each type (default: 1, or from --hours).")
    hours: float | None = setting(
        None, "Tag the tracks within this many hours: GPU nodes are chosen to fit."
    )
    max_decode_nodes: int | None = setting(
        None, "At most this many decode nodes (default: as many as feed the GPUs)."
    )
    model: str = setting(
        "spectrogram", f"Model whose measured ceiling is used: {', '.join(MODEL_CEILINGS)}."
    )
    patches_per_s: dict[str, float] = setting(
        factory=dict, help="GPU=PATCHES_PER_S: a GPU's model ceiling, instead of the table's "
        "(measured or estimated); repeatable.", multiple=True, parse=_positive_floats,
    )  # fmt: skip
    gpu_node_shapes: dict[str, GpuNode] = setting(
        factory=dict, help="GPU=INSTANCE:GPUS:VCPUS: a GPU node type, instead of the table's "
        "or new (then give --patches-per-s too); repeatable.", flag="--gpu-node",
        multiple=True, parse=_gpu_nodes,
    )  # fmt: skip
    patches_per_track: int = setting(10, "Patches per track: 10 for a 30-s track of 3-s patches.")
    decode_cpu_s: dict[str, float] = setting(
        factory=dict, help="CPU-seconds to decode a track: FORMAT=SECONDS, repeatable, or one "
        "SECONDS for the mix (default: the table's).", multiple=True,
        parse=_decode_costs,
    )  # fmt: skip
    format_shares: dict[str, float] = setting(
        factory=dict, help="FORMAT=FRACTION of the tracks, for each --decode-cpu-s format "
        "(default: equal shares).", flag="--format-share", multiple=True,
        parse=_positive_floats,
    )  # fmt: skip
    decode_efficiency: float = setting(
        round(DECODE_CEILING.value / DECODE_IN_PIPELINE.value, 3),
        "Share of a decode actor's CPU time that goes into the decode stage (default: the "
        "decode ceiling's CPU-s per track over the decode actors', as measured on the H200 "
        "node).",
    )
    pipeline_fraction: float = setting(
        0.8, "Share of the model ceiling the pipeline reaches (an assumption, not measured)."
    )
    decode_instance: str = setting("c7i.4xlarge", "Decode node instance type.")
    decode_vcpus: int = setting(16, "vCPUs per decode node, each running a decode actor.")
    bytes_per_patch: int = setting(
        96_000,
        "Bytes a patch crosses the network in: 3 s at 16 kHz in 16-bit PCM (raytag tag's "
        "--pcm16); 192,000 in float32.",
    )
    decode_on: str = setting(
        "decode-nodes",
        "decode-nodes: only decode nodes decode; anywhere: GPU nodes' spare vCPUs too.",
    )

    def __post_init__(self) -> None:
        positive = ("tracks", "gpu_nodes", "patches_per_track", "decode_vcpus", "bytes_per_patch")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_decode_nodes is not None and self.max_decode_nodes < 0:
            raise ValueError("max_decode_nodes must be >= 0")
        if self.hours is not None and (self.hours <= 0 or self.gpu_nodes is not None):
            raise ValueError("hours must be > 0, and --hours and --gpu-nodes exclude each other")
        for name in ("decode_efficiency", "pipeline_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if self.model not in MODEL_CEILINGS:
            raise ValueError(f"model must be one of {', '.join(MODEL_CEILINGS)}")
        if self.decode_on not in DECODE_ON:
            raise ValueError(f"decode_on must be one of {', '.join(DECODE_ON)}")
        unknown = set(self.gpu_types) - set(self.node_types)
        if unknown:
            raise ValueError(f"unknown GPU types {sorted(unknown)}: add them with --gpu-node")

    @property
    def node_types(self) -> dict[str, GpuNode]:
        return {**GPU_NODES, **self.gpu_node_shapes}

    def decode_shares(self) -> dict[str, tuple[float, float]]:
        """Each format's CPU-seconds per track and share of the tracks."""
        costs = self.decode_cpu_s or {n: m.value / 1000 for n, m in DECODE_STAGE_MS.items()}
        shares = self.format_shares or {name: 1 / len(costs) for name in costs}
        if set(shares) != set(costs) or not math.isclose(sum(shares.values()), 1.0):
            raise ValueError(f"--format-share must give each of {sorted(costs)}, summing to 1")
        return {name: (costs[name], shares[name]) for name in costs}

    def decode_cpu_s_per_track(self) -> float:
        """CPU-seconds a decode CPU spends per track, the pipeline's overhead included."""
        ceiling = sum(cost * share for cost, share in self.decode_shares().values())
        return ceiling / self.decode_efficiency

    def ceiling(self, node: GpuNode) -> tuple[float, str]:
        """A GPU's model ceiling in patches/s, and whether it is measured, estimated or given."""
        if node.gpu in self.patches_per_s:
            return self.patches_per_s[node.gpu], "given"
        measured = MODEL_CEILINGS[self.model].value
        if node.gpu == MEASURED_GPU:
            return measured, "measured"
        if node.bf16_tflops is None:
            raise ValueError(f"{node.gpu}: no ceiling to scale; give --patches-per-s {node.gpu}=")
        return measured * node.bf16_tflops / GPU_NODES[MEASURED_GPU].bf16_tflops, "estimated"


@dataclass(frozen=True)
class GpuPlan:
    """The plan for one GPU type."""

    gpu: str
    instance_type: str
    ceiling_patches_per_s: float  # per GPU
    ceiling_is: str  # measured, estimated or given
    gpu_bound_tracks_per_s: float  # per GPU
    decode_cpus_per_gpu: float
    decode_nodes_per_gpu_node: float
    gpu_nodes: int
    decode_nodes: int
    tracks_per_s: float  # the cluster's
    bound_by: str  # gpus or decoding
    gpu_bound_share: float  # of the GPUs' own rate the cluster reaches
    ingress_gbit_per_s: float  # decoded patches into each GPU node
    hours: float
    cluster_yaml: dict[str, Any]  # max_workers and the two worker types
    tag_options: str  # for `raytag tag` / jobs/tag.py on that cluster


@dataclass(frozen=True)
class Plan:
    inputs: PlanInputs
    decode_cpu_s_per_track: float  # per decode CPU, overhead included
    gpus: list[GpuPlan]


def _ceil(value: float) -> int:
    return math.ceil(value - 1e-9)  # 3.0000000001 from float sums is 3


def plan_gpu(inputs: PlanInputs, node: GpuNode) -> GpuPlan:
    """One GPU type's plan (see the module docstring)."""
    # The tagging package imports Ray: here, not when `raytag` starts.
    from raytag.tagging.options import DECODE_ROLE, ROLE_LABEL

    ceiling, ceiling_is = inputs.ceiling(node)
    per_gpu = ceiling * inputs.pipeline_fraction / inputs.patches_per_track
    cpu_s = inputs.decode_cpu_s_per_track()
    node_rate = per_gpu * node.gpus
    spare = node.vcpus - node.gpus if inputs.decode_on == "anywhere" else 0  # 1 per model actor
    per_node_nodes = max(0.0, node_rate * cpu_s - spare) / inputs.decode_vcpus
    if inputs.hours is not None:
        gpu_nodes = _ceil(inputs.tracks / (inputs.hours * 3600 * node_rate))
    else:
        gpu_nodes = inputs.gpu_nodes or 1
    decode_nodes = _ceil(gpu_nodes * per_node_nodes)
    if inputs.max_decode_nodes is not None:
        decode_nodes = min(decode_nodes, inputs.max_decode_nodes)
    decode_cpus = decode_nodes * inputs.decode_vcpus + gpu_nodes * spare
    if decode_cpus <= 0:
        raise ValueError(f"{node.gpu}: no CPU decodes; allow decode nodes or --decode-on anywhere")
    rate = min(gpu_nodes * node_rate, decode_cpus / cpu_s)
    patch_bits = inputs.bytes_per_patch * 8
    return GpuPlan(
        gpu=node.gpu,
        instance_type=node.instance_type,
        ceiling_patches_per_s=ceiling,
        ceiling_is=ceiling_is,
        gpu_bound_tracks_per_s=per_gpu,
        decode_cpus_per_gpu=per_gpu * cpu_s,
        decode_nodes_per_gpu_node=per_node_nodes,
        gpu_nodes=gpu_nodes,
        decode_nodes=decode_nodes,
        tracks_per_s=rate,
        bound_by="gpus" if rate >= gpu_nodes * node_rate * (1 - 1e-9) else "decoding",
        gpu_bound_share=rate / (gpu_nodes * node_rate),
        ingress_gbit_per_s=rate / gpu_nodes * inputs.patches_per_track * patch_bits / 1e9,
        hours=inputs.tracks / rate / 3600,
        cluster_yaml={
            "max_workers": gpu_nodes + decode_nodes,
            "ray.worker.gpu": {
                "InstanceType": node.instance_type,
                "min_workers": 0,
                "max_workers": gpu_nodes,
                "labels": {ROLE_LABEL: "inference"},
            },
            "ray.worker.decode": {
                "InstanceType": inputs.decode_instance,
                "min_workers": 0,
                "max_workers": decode_nodes,
                "labels": {ROLE_LABEL: DECODE_ROLE},
            },
        },
        tag_options=f"--gpu --actors {gpu_nodes * node.gpus} --decode-on {inputs.decode_on} "
        f"--decode-tasks {decode_cpus}",
    )


def make_plan(inputs: PlanInputs) -> Plan:
    types = inputs.gpu_types or tuple(inputs.node_types)
    return Plan(
        inputs=inputs,
        decode_cpu_s_per_track=inputs.decode_cpu_s_per_track(),
        gpus=[plan_gpu(inputs, inputs.node_types[gpu]) for gpu in types],
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def assumptions(inputs: PlanInputs) -> list[str]:
    """What a plan takes for granted, with the values in effect (docs/capacity.md)."""
    mix = ", ".join(
        f"{name} {cost * 1000:.1f} ms" + ("" if share == 1 else f" ({share:.0%})")
        for name, (cost, share) in inputs.decode_shares().items()
    )
    nodes = inputs.node_types.values()
    scaled = ", ".join(f"{n.gpu} {n.bf16_tflops:g}" for n in nodes if n.bf16_tflops)
    where = (
        "GPU nodes' vCPUs beyond one per GPU decode too"
        if inputs.decode_on == "anywhere"
        else "only decode nodes decode (GPU nodes' and the head's CPUs do not)"
    )
    return [
        f"a track is {inputs.patches_per_track} patches; the pipeline reaches "
        f"{inputs.pipeline_fraction:.0%} of the model ceiling ({inputs.model}, bf16)",
        f"GPUs not measured scale the {MEASURED_GPU}'s ceiling by dense bf16 tensor TFLOPS "
        f"({scaled})",
        f"the decode stage costs CPU per track: {mix}; a decode CPU spends "
        f"{inputs.decode_efficiency:.0%} of its time in it",
        f"every vCPU of a decode node ({inputs.decode_instance}, {inputs.decode_vcpus} vCPUs) "
        f"runs a decode actor, as fast as a vCPU of the CPU VM that measured it; {where}",
        f"a GPU node's network and Ray's object transfer carry its patches ("
        f"{inputs.bytes_per_patch:,} bytes each); hours exclude node start-up and each run's "
        "fixed costs (plan + verify)",
    ]


def format_plan(plan: Plan) -> str:
    """The plan as a table, a GPU type per column, then each type's cluster.yaml counts."""
    inputs, gpus = plan.inputs, plan.gpus
    header = [f"{g.gpu}{'*' if g.ceiling_is == 'estimated' else ''}" for g in gpus]
    rows = [
        ("GPU node", [g.instance_type for g in gpus]),
        ("model ceiling per GPU, patches/s", [_number(g.ceiling_patches_per_s) for g in gpus]),
        ("GPU-bound tracks/s per GPU", [_number(g.gpu_bound_tracks_per_s) for g in gpus]),
        ("decode CPUs per GPU", [_number(g.decode_cpus_per_gpu) for g in gpus]),
        ("decode nodes per GPU node", [_number(g.decode_nodes_per_gpu_node) for g in gpus]),
        ("GPU nodes", [str(g.gpu_nodes) for g in gpus]),
        (f"decode nodes ({inputs.decode_instance})", [str(g.decode_nodes) for g in gpus]),
        ("cluster tracks/s", [_number(g.tracks_per_s) for g in gpus]),
        ("bound by", [g.bound_by for g in gpus]),
        ("share of the GPUs' rate", [f"{g.gpu_bound_share:.0%}" for g in gpus]),
        ("patches into a GPU node, Gbit/s", [_number(g.ingress_gbit_per_s) for g in gpus]),
        (f"hours for {inputs.tracks:,} tracks", [_number(g.hours) for g in gpus]),
    ]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(header)]

    def line(label: str, cells: list[str]) -> str:
        padded = (cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        return "  ".join([label.ljust(label_width), *padded])

    out = [line("", header), *(line(label, cells) for label, cells in rows)]
    if any(g.ceiling_is == "estimated" for g in gpus):
        out.append(f"* estimated from the {MEASURED_GPU} measurement (assumptions below)")
    for g in gpus:
        out += ["", f"{g.gpu}: cluster.yaml max_workers: {g.cluster_yaml['max_workers']}"]
        for name in ("ray.worker.gpu", "ray.worker.decode"):
            spec = g.cluster_yaml[name]
            labels = ", ".join(f"{k}: {v}" for k, v in spec["labels"].items())
            out.append(
                f"  {name}: InstanceType {spec['InstanceType']}, min_workers "
                f"{spec['min_workers']}, max_workers {spec['max_workers']}, labels {{{labels}}}"
            )
        out.append(f"  raytag tag ... {g.tag_options}")
    out += ["", "Assumptions (docs/capacity.md):", *(f"- {a}" for a in assumptions(inputs))]
    return "\n".join(out)


@click.command("plan", cls=SettingsCommand, settings="raytag.plan:PlanInputs")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(as_json: bool, **settings: Any) -> None:
    """Size a tagging cluster (GPU and decode nodes) from measured costs: docs/capacity.md."""
    try:
        result = make_plan(build(PlanInputs, settings))
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    if as_json:
        record = dataclasses.asdict(result)
        record["assumptions"] = assumptions(result.inputs)
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(format_plan(result))
