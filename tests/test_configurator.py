import pytest

from configurator import configure


def defaults():
    return {"lr": 1e-3, "iters": 10, "name": "x", "flag": False, "path": None}


def test_overrides_types_and_files(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("iters = 20\nname = 'from_file'\n")
    g = defaults()
    out = configure(g, [str(cfg), "--lr=3", "--name", "cli", "--flag", "--path=/a/b"])
    assert out == {"lr": 3.0, "iters": 20, "name": "cli", "flag": True, "path": "/a/b"}
    assert configure(defaults(), ["--flag=False"])["flag"] is False


@pytest.mark.parametrize("argv,msg", [(["--lrr=1"], "unknown config key --lrr"), (["--iters=1.5"], "expected int"),
                                      (["--iters=abc"], "not a valid int"), (["--flag=maybe"], "not a valid bool"),
                                      (["--iters"], "needs a value")])
def test_errors(argv, msg):
    with pytest.raises(ValueError, match=msg):
        configure(defaults(), argv)


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("itres = 20\n")
    with pytest.raises(ValueError, match="unknown config key"):
        configure(defaults(), [str(cfg)])
