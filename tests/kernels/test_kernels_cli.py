"""`evilbench kernels demo` runs end to end (one layer of Qwen3-0.6B) and prints the table."""
from evilbench import cli


def test_kernels_demo_prints_the_speedup_table(capsys):
    assert cli.main(["kernels", "demo", "--layers", "1", "--rounds", "1", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "14 rank-32 LoRA factors of qwen3-0.6b" in out
    for impl in ("ours", "eager-fp32", "bmm-batched", "gram-torch-batched", "gram-torch-loop", "torch-muon"):
        assert impl in out
    assert "max relative error" in out
