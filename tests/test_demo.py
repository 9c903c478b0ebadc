"""`avfeat demo` end to end (the README's main job) and `avfeat eval` on its output.

The demo takes over two minutes on a 2-core CPU, so the tests that use it are `slow` (`make test-slow`)."""

import json

import pytest

from avfeat.testing.runner import run_avfeat as avfeat


# The demo's minutes count against each test's pytest-timeout; on a busy machine they can pass
# the default 600 s. This is a hang guard, not a speed check (benchmarks measure speed).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    avfeat("demo", "--out", out, "--quiet", check=0)
    return out


@pytest.mark.slow
def test_demo_writes_every_stage_and_a_report_with_pictures(demo):
    for stage in ("synth", "cache", "heads", "index"):
        assert (demo / stage).is_dir()
    report = (demo / "report.md").read_text()
    for section in ("## Metrics", "## Training curves", "## Example searches", "## Where the sound is", "## Synchronization", "## Locate"):
        assert section in report
    pictures = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(pictures) >= 6
    for picture in pictures:
        assert (demo / picture).stat().st_size > 1000, picture


@pytest.mark.slow
@pytest.mark.acceptance
def test_eval_on_the_demo_meets_the_acceptance_levels(demo):
    report = json.loads(avfeat("eval", demo / "cache", "--heads", demo / "heads", "--labels", demo / "synth" / "ground_truth.parquet", "--json", check=0).stdout)
    retrieval = report["retrieval"]
    assert set(retrieval) == {"a2v", "v2a", "class_a2v", "class_v2a"}
    assert set(retrieval["a2v"]) == {"R@1", "R@5", "R@10", "median_rank"}
    assert retrieval["class_a2v"]["R@1"] >= 0.9 and retrieval["class_v2a"]["R@1"] >= 0.9
    assert report["sync"]["acc_within_1"] >= 0.9
    localization = report["localization"]
    assert localization["pointing_game"] >= 3 * localization["box_area_share"]
    # without ground truth: instance level only, no localization
    plain = json.loads(avfeat("eval", demo / "cache", "--heads", demo / "heads", "--json", check=0).stdout)
    assert set(plain["retrieval"]) == {"a2v", "v2a"} and "localization" not in plain


def test_demo_refuses_unusable_output(tmp_path):
    (tmp_path / "file").write_text("x")
    result = avfeat("demo", "--out", tmp_path / "file")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "not a folder" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    for flags in ((), ("--overwrite",)):
        result = avfeat("demo", "--out", tmp_path / "full", *flags)
        assert result.returncode == 1 and "not an avfeat demo" in result.stderr
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]  # the writer lock left nothing behind


@pytest.mark.slow
def test_eval_refuses_heads_from_other_backbones(demo, tmp_path):
    from avfeat.data.synth import make_corpus

    make_corpus(tmp_path / "v", videos=3, seconds=2.0, classes=2, seed=1, size=64)
    other = tmp_path / "cache"
    avfeat("extract", tmp_path / "v", "--out", other, "--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny", "--visual-layer", "1", "--quiet", check=0)
    result = avfeat("eval", other, "--heads", demo / "heads")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "visual_layer" in result.stderr


def test_demo_overwrite_keeps_a_folder_it_cannot_prove_it_wrote(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / ".avfeat-demo").write_text("a look-alike marker\n")
    (out / "report.md").write_text("my report")
    result = avfeat("demo", "--out", out, "--overwrite", "--quiet")
    assert result.returncode == 1 and "avfeat-output.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (out / "report.md").read_text() == "my report" and (out / ".avfeat-demo").read_text() == "a look-alike marker\n"
