"""``prdit convert``: an official checkpoint -> prdit's .safetensors, which samples the same as the checkpoint."""


import torch
from test_official import write_official_checkpoint

from prdit.cli import main


def test_convert_writes_safetensors_that_load_like_the_checkpoint(tmp_path, capsys):
    from prdit import load_pipeline

    write_official_checkpoint(tmp_path / "official.pt")
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(tmp_path / "official.pt"), "--out", str(out), "--hu-range", "-1024", "1500"]) == 0
    assert "PRDiT-XS/10/1" in capsys.readouterr().out
    direct, converted = load_pipeline(tmp_path / "official.pt", device="cpu"), load_pipeline(out, device="cpu")
    x, t = 0.5 * torch.randn(1, 1, 16, 16, 16), torch.tensor([300])
    with torch.no_grad():
        assert torch.equal(direct.model(x, t), converted.model(x, t))  # float32 by default: exact
    assert converted.mapping.reference_range == (-1024.0, 1500.0)
    assert converted.sidecar(0, "ian-2m", 2)["source"]["hu_range_note"] == "given by the user"
    assert main(["convert", str(tmp_path / "official.pt"), "--out", str(out)]) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err


def test_convert_refuses_what_is_not_an_official_checkpoint(tmp_path, capsys):
    torch.save({"model": {"local_denoiser.out.weight": torch.zeros(2, 2)}, "meta": {}}, tmp_path / "prdit.pt")
    assert main(["convert", str(tmp_path / "prdit.pt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "not a checkpoint of the official PRDiT code" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["convert", str(tmp_path / "prdit.pt"), "--out", str(tmp_path / "x.pt")]) == 2
