"""`raytag plan`: the arithmetic on hand-checked cases, options over the measured table,
the table against docs/benchmarks.md, and the command as a user runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from raytag.plan import (
    DECODE_CEILING,
    DECODE_IN_PIPELINE,
    DECODE_STAGE_MS,
    GPU_NODES,
    MEASURED_GPU,
    MODEL_CEILINGS,
    GpuNode,
    GpuPlan,
    Measured,
    PlanInputs,
    make_plan,
    plan,
)

ROOT = Path(__file__).resolve().parents[1]

# A made-up GPU with round figures: 1,000 patches/s at half the ceiling over 10 patches
# is 50 tracks/s per GPU; decoding at 0.2 CPU-s, 80 % efficient, is 0.25 CPU-s a track, so
# 12.5 CPUs per GPU, 25 per 2-GPU node: 6.25 decode nodes of 4 vCPUs per GPU node.
TOY = {
    "gpu_node_shapes": {"T": GpuNode("T", "t.big", gpus=2, vcpus=8)},
    "gpu_types": ("T",),
    "patches_per_s": {"T": 1000.0},
    "patches_per_track": 10,
    "pipeline_fraction": 0.5,
    "decode_cpu_s": {"mixed": 0.2},
    "decode_efficiency": 0.8,
    "decode_vcpus": 4,
    "tracks": 36_000,
}


def toy(**changes) -> GpuPlan:
    (result,) = make_plan(PlanInputs(**{**TOY, **changes})).gpus
    return result


def test_gpu_bound_plan() -> None:
    result = toy(gpu_nodes=3)
    assert result.gpu_bound_tracks_per_s == pytest.approx(50)
    assert result.decode_cpus_per_gpu == pytest.approx(12.5)
    assert result.decode_nodes_per_gpu_node == pytest.approx(6.25)
    assert result.decode_nodes == 19  # 3 x 6.25 = 18.75 nodes
    assert result.tracks_per_s == pytest.approx(300)  # 3 nodes x 2 GPUs x 50
    assert (result.bound_by, result.gpu_bound_share) == ("gpus", pytest.approx(1))
    assert result.hours == pytest.approx(36_000 / 300 / 3600)
    # 100 tracks/s into each GPU node, of 10 patches of 96,000 bytes (16-bit PCM).
    assert result.ingress_gbit_per_s == pytest.approx(100 * 10 * 96_000 * 8 / 1e9)
    assert toy(gpu_nodes=3, bytes_per_patch=1000).ingress_gbit_per_s == pytest.approx(0.008)
    assert result.cluster_yaml["max_workers"] == 22
    assert result.cluster_yaml["ray.worker.gpu"]["max_workers"] == 3
    assert result.cluster_yaml["ray.worker.decode"]["max_workers"] == 19
    assert result.tag_options == "--gpu --actors 6 --decode-on decode-nodes --decode-tasks 76"


def test_capped_decode_pool_bounds_the_rate() -> None:
    result = toy(gpu_nodes=3, max_decode_nodes=10)  # 40 CPUs / 0.25 CPU-s = 160 tracks/s
    assert result.decode_nodes == 10
    assert result.tracks_per_s == pytest.approx(160)
    assert (result.bound_by, result.gpu_bound_share) == ("decoding", pytest.approx(160 / 300))
    assert result.hours == pytest.approx(36_000 / 160 / 3600)


def test_decoding_anywhere_counts_gpu_nodes_spare_vcpus() -> None:
    result = toy(gpu_nodes=3, decode_on="anywhere")  # 8 - 2 spare: (25 - 6) / 4 per node
    assert result.decode_nodes_per_gpu_node == pytest.approx(4.75)
    assert result.decode_nodes == 15  # 3 x 4.75 = 14.25
    assert result.tag_options.endswith("--decode-on anywhere --decode-tasks 78")  # 60 + 18


@pytest.mark.parametrize(("hours", "gpu_nodes"), [(0.05, 2), (0.04, 3)])
def test_hours_choose_the_gpu_nodes(hours: float, gpu_nodes: int) -> None:
    # 36,000 tracks at 100 tracks/s per node: 2 nodes in 0.05 h exactly, 2.5 in 0.04 h.
    assert toy(hours=hours).gpu_nodes == gpu_nodes


def test_format_mix() -> None:
    costs = {"mp3": 0.3, "flac": 0.1}
    weighted = PlanInputs(
        **{**TOY, "decode_cpu_s": costs}, format_shares={"mp3": 0.25, "flac": 0.75}
    )
    assert weighted.decode_cpu_s_per_track() == pytest.approx((0.075 + 0.075) / 0.8)
    equal = PlanInputs(**{**TOY, "decode_cpu_s": costs})
    assert equal.decode_cpu_s_per_track() == pytest.approx(0.2 / 0.8)
    with pytest.raises(ValueError, match="format-share"):
        PlanInputs(**{**TOY, "decode_cpu_s": costs}, format_shares={"mp3": 1.0}).decode_shares()


def test_measured_table_estimates_and_overrides() -> None:
    by_gpu = {g.gpu: g for g in make_plan(PlanInputs()).gpus}
    assert set(by_gpu) == set(GPU_NODES)
    h200 = MODEL_CEILINGS["spectrogram"].value
    measured = by_gpu[MEASURED_GPU]
    assert (measured.ceiling_patches_per_s, measured.ceiling_is) == (h200, "measured")
    assert by_gpu["A10G"].ceiling_is == by_gpu["H100"].ceiling_is == "estimated"
    assert by_gpu["A10G"].ceiling_patches_per_s == pytest.approx(h200 * 70 / 989)
    assert by_gpu["H100"].ceiling_patches_per_s == pytest.approx(h200)
    # By default a decode CPU spends per track the decode stage's cost over an equal mix of
    # formats, over the share of its time the H200 node's decode actors spent decoding.
    stage_s = sum(m.value for m in DECODE_STAGE_MS.values()) / len(DECODE_STAGE_MS) / 1000
    efficiency = DECODE_CEILING.value / DECODE_IN_PIPELINE.value
    assert PlanInputs().decode_cpu_s_per_track() == pytest.approx(stage_s / efficiency, 1e-3)
    waveform = make_plan(PlanInputs(model="waveform", gpu_types=("H200",))).gpus[0]
    assert waveform.ceiling_patches_per_s == MODEL_CEILINGS["waveform"].value
    given = make_plan(PlanInputs(gpu_types=("A10G",), patches_per_s={"A10G": 2000.0})).gpus[0]
    assert (given.ceiling_patches_per_s, given.ceiling_is) == (2000.0, "given")


def test_a_new_gpu_without_a_ceiling_is_refused() -> None:
    shapes = {"L4": GpuNode("L4", "g6.2xlarge", gpus=1, vcpus=8)}
    with pytest.raises(ValueError, match="patches-per-s L4"):
        make_plan(PlanInputs(gpu_node_shapes=shapes, gpu_types=("L4",)))
    with pytest.raises(ValueError, match="unknown GPU types"):
        PlanInputs(gpu_types=("L4",))


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


MEASURED = [*MODEL_CEILINGS.values(), DECODE_CEILING, DECODE_IN_PIPELINE,
            *DECODE_STAGE_MS.values()]  # fmt: skip


@pytest.mark.parametrize("figure", MEASURED, ids=lambda figure: f"{figure.value:g}")
def test_measured_figures_are_in_the_benchmarks_section_they_cite(figure: Measured) -> None:
    path, _, anchor = figure.source.split(" ")[0].partition("#")
    text = (ROOT / path).read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    section = next(s for s in sections if _slug(s.splitlines()[0]) == anchor)
    assert f"{figure.value:,}" in section


def invoke(*args: str):
    return CliRunner().invoke(plan, list(args), catch_exceptions=False)


def test_command_json_has_every_field() -> None:
    result = invoke(
        "--json", "--gpu-type", "A10G", "--gpu-nodes", "4", "--patches-per-s", "A10G=2000",
        "--decode-cpu-s", "0.1", "--decode-efficiency", "1", "--pipeline-fraction", "1",
        "--tracks", "720000",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    (a10g,) = record["gpus"]
    assert set(a10g) == set(GpuPlan.__dataclass_fields__)
    # 2,000 patches/s over 10 patches: 200 tracks/s per GPU, 20 decode CPUs each; 4 nodes
    # need 80 CPUs, 5 decode nodes, and tag 800 tracks/s: 720,000 tracks in 0.25 h.
    assert (a10g["ceiling_is"], a10g["decode_cpus_per_gpu"]) == ("given", pytest.approx(20))
    assert (a10g["decode_nodes"], a10g["tracks_per_s"]) == (5, pytest.approx(800))
    assert a10g["hours"] == pytest.approx(0.25)
    assert a10g["cluster_yaml"]["ray.worker.decode"]["labels"] == {"raytag/role": "decode"}
    assert record["decode_cpu_s_per_track"] == pytest.approx(0.1)
    assert record["inputs"]["decode_cpu_s"] == {"mixed": 0.1}
    assert len(record["assumptions"]) >= 4


def test_command_table_marks_estimates() -> None:
    result = invoke()
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header == ["A10G*", "H100*", "H200"]
    assert "hours for 10,000,000 tracks" in result.output
    assert "ray.worker.decode: InstanceType c7i.4xlarge, min_workers 0" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hours", "2", "--gpu-nodes", "2"], "exclude each other"),
        (["--gpu-node", "L4=g6.2xlarge:1"], "INSTANCE:GPUS:VCPUS"),
        (["--decode-on", "head"], "decode_on"),
        (["--pipeline-fraction", "1.5"], "pipeline_fraction"),
    ],
)
def test_command_refuses_bad_inputs(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_capacity_doc_shows_what_the_command_prints() -> None:
    """docs/capacity.md's worked examples are pasted outputs: they must still be true."""
    doc = (ROOT / "docs" / "capacity.md").read_text()
    examples = re.findall(r"```console\n\$ raytag plan (.*?)\n(.*?)\n```", doc, re.DOTALL)
    assert len(examples) >= 2
    for args, printed in examples:
        assert invoke(*args.split()).output.rstrip("\n") == printed, args
