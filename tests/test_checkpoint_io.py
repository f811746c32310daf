"""Safe checkpoint reading and strict, explained loading (the layer under every converter)."""
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from zoo.weights import CheckpointMismatchError, UnsafeCheckpointError, load_state_dict_into, read_state_dict


class Net(nn.Module):
    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3)
        self.fc = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.fc


def test_unwraps_wrappers_and_prefixes(tmp_path):
    sd = Net().state_dict()
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "a.ckpt")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pth")
    for name in ("a.ckpt", "b.pth"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_safetensors_detected_without_suffix(tmp_path):
    sd = {k: v.contiguous() for k, v in Net().state_dict().items()}
    save_file(sd, str(tmp_path / "w.bin"))
    assert set(read_state_dict(tmp_path / "w.bin")) == set(sd)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/zoo_pwned_marker",))


def test_code_running_pickle_is_refused(tmp_path):
    import os

    marker = "/tmp/zoo_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"w": torch.zeros(1), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="not executed"):
        read_state_dict(tmp_path / "evil.pth")
    assert not os.path.exists(marker)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save(Net().state_dict(), tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_state_dict(tmp_path / "t.pth")


def test_mismatch_lists_keys():
    sd = Net().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.weight"] = torch.zeros(8, 3, 5, 5)
    del sd["conv.bias"]
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_into(Net(), sd)
    msg = str(e.value)
    assert "missing (1): conv.bias" in msg and "unexpected (1): extra.weight" in msg and "conv.weight (8, 3, 5, 5)" in msg


def test_classifier_of_other_size_reinitialised_with_warning():
    src = Net(num_classes=10)
    dst = Net(num_classes=4)
    fc_before = dst.fc.weight.clone()
    with pytest.warns(UserWarning, match="re-initialised"):
        report = load_state_dict_into(dst, src.state_dict())
    assert report.reinitialized == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.conv.weight, src.conv.weight) and torch.equal(dst.fc.weight, fc_before)
    with pytest.warns(UserWarning):
        load_state_dict_into(Net(num_classes=0), src.state_dict())


@pytest.mark.parametrize("in_chans", [1, 2, 6])
def test_first_conv_adapted_to_in_chans(in_chans):
    src = Net()
    dst = Net(in_chans=in_chans)
    report = load_state_dict_into(dst, src.state_dict())
    assert report.adapted == ["conv.weight"] and dst.conv.weight.shape[1] == in_chans
    if in_chans % 3 and in_chans != 1:
        return  # repeat-and-truncate keeps only the scale, not the exact grey response
    # A grey image fed to every channel gives the same pre-activation as the RGB original.
    x = torch.randn(1, 1, 6, 6)
    ref = nn.functional.conv2d(x.expand(-1, 3, -1, -1), src.conv.weight)
    got = nn.functional.conv2d(x.expand(-1, in_chans, -1, -1), dst.conv.weight)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
