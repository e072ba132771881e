from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_equals_defaults() -> None:
    assert load_config(REPO / "config.toml") == Config()


def test_shipped_config_documents_every_key() -> None:
    text = (REPO / "config.toml").read_text()
    cfg = Config()
    assert "[[streams]]" in text  # documented by a commented example
    for section in (f.name for f in dataclasses.fields(cfg) if f.name != "streams"):
        assert f"[{section}]" in text
        for key in (f.name for f in dataclasses.fields(getattr(cfg, section))):
            line = next((ln for ln in text.splitlines() if ln.startswith(f"{key} =")), None)
            assert line is not None, f"{section}.{key} missing from config.toml"
            assert "#" in line, f"{section}.{key} has no comment"


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[tracker]\nmin_hitz = 2\n", ["unknown key [tracker] 'min_hitz'", "did you mean 'min_hits'"]),
        ("[trackr]\n", ["unknown section [trackr]", "did you mean 'tracker'"]),
        ("[tracker]\nmin_hits = \"3\"\n", ["[tracker] min_hits", "expected an integer", "'3'"]),
        ("[tracker]\nmin_hits = true\n", ["[tracker] min_hits", "expected an integer"]),
        ("[tracker]\nappearance_weight = 1.5\n", ["appearance_weight", "got 1.5", "allowed range 0.0 .. 1.0"]),
        ("[encoder]\ndevice = \"tpu\"\n", ["[encoder] device", "'tpu'", "allowed: 'auto', 'cpu', 'cuda'"]),
        ("[metrics]\nport = 70000\n", ["[metrics] port", "70000"]),
        ("tracker = 3\n", ["[tracker] must be a table"]),
        ("[tracker\n", ["not valid TOML"]),
        ("[tracker]\nmax_cost = nan\n", ["[tracker] max_cost", "expected a number (finite)", "nan"]),
        ("[bank]\nfalse_alarm_rate = inf\n", ["[bank] false_alarm_rate", "finite"]),
        ("[output]\nvideo_fourcc = \"abc\"\n", ["video_fourcc", "'abc'", "4-character"]),
        ("[encoder]\nstage = 3\npatch_stage = 4\n", ["patch_stage = 4 comes after stage = 3"]),
        ("[tracker]\nappearance_region = \"mask\"\n", ["[tracker] appearance_region", "'crop', 'box'"]),
        ("[tracker]\nappearance_region = \"box\"\n[bank]\nlevel = \"global\"\n[encoder]\npatch_stage = 0\n",
         ["appearance_region = 'box' needs patch features", "appearance_region = 'crop'"]),
    ],
)
def test_bad_config_names_file_key_value_and_allowed(tmp_path: Path, toml: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg
    assert "\n" not in msg


def test_int_accepted_for_float_and_override_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[tracker]\nmax_cost = 1\nmin_hits = 5\n")
    cfg = load_config(path, ["tracker.min_hits=2", "anomaly.bank=\"b\"", "output.dir=plain/path"])
    assert cfg.tracker.max_cost == 1.0 and isinstance(cfg.tracker.max_cost, float)
    assert cfg.tracker.min_hits == 2
    assert cfg.anomaly.bank == "b"
    assert cfg.output.dir == "plain/path"


@pytest.mark.parametrize("text", ["tracker", "tracker.min_hits", "=3"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override(text)


def test_override_checked_like_file() -> None:
    with pytest.raises(ConfigError, match=r"\[tracker\] min_hits.*allowed range"):
        load_config(None, ["tracker.min_hits=0"])


def test_a_height_ratio_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[tracker\] max_height_ratio = 0.5.*allowed: 0 \(off\) or >= 1"):
        load_config(None, ["tracker.max_height_ratio=0.5"])
    assert load_config(None, ["tracker.max_height_ratio=0"]).tracker.max_height_ratio == 0.0


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/siamstream.toml")


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.tracker.min_hits = 4  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "deploy" / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_line_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg != Config()  # each one sets something of its own


# ---------------------------------------------------------------------------------------------------------------
# [[streams]]

STREAMS = """
[tracker]
min_hits = 3
[anomaly]
bank = "banks/shared"
[[streams]]
name = "line1"
source = "line1.mp4"
[[streams]]
name = "dock"
source = "rtsp://user:secret@10.0.0.12/s1"
[streams.tracker]
min_hits = 5
[streams.anomaly]
bank = "banks/dock"
[streams.output]
video = false
"""


def test_streams_merge_their_own_tables_over_the_shared_sections(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(STREAMS)
    cfg = load_config(p, ["tracker.max_cost=0.5"])
    line1, dock = cfg.streams
    assert (line1.name, line1.source, dock.name) == ("line1", "line1.mp4", "dock")
    assert line1.tracker.min_hits == 3 and dock.tracker.min_hits == 5
    assert line1.tracker.max_cost == dock.tracker.max_cost == 0.5  # --set reaches every stream
    assert line1.anomaly.bank == "banks/shared" and dock.anomaly.bank == "banks/dock"
    assert line1.output.video and not dock.output.video
    assert (line1.output.stream_name, dock.output.stream_name) == ("line1", "dock")
    one = dock.config(cfg)
    assert one.streams == () and one.source.uri == dock.source and one.tracker == dock.tracker
    assert one.encoder == cfg.encoder  # shared


@pytest.mark.parametrize(
    ("streams", "fragments"),
    [
        ('[[streams]]\nname = "a b"\nsource = "x.mp4"\n', ["entry 1: name", "'a b'", "letters, digits"]),
        ('[[streams]]\nsource = "x.mp4"\n', ["entry 1: name", "None"]),
        ('[[streams]]\nname = "a"\n', ["[[streams]] 'a': source", "a file, folder, camera index or URL"]),
        ('[[streams]]\nname = "a"\nsource = "x"\n[[streams]]\nname = "a"\nsource = "y"\n',
         ["'a': the name is used twice"]),
        ('[[streams]]\nname = "a"\nsource = "x"\nbank = "b"\n', ["'a': unknown key 'bank'", "[streams.anomaly]"]),
        ('[[streams]]\nname = "a"\nsource = "x"\n[streams.encoder]\nthreads = 1\n', ["unknown key 'encoder'"]),
        ('[[streams]]\nname = "a"\nsource = "x"\n[streams.output]\ndir = "o"\n', ["[streams.output] dir cannot be set",
                                                                                  "OUT/<name>"]),
        ('[[streams]]\nname = "a"\nsource = "x"\n[streams.tracker]\nmin_hits = "2"\n',
         ["[[streams]] 'a'", "[tracker] min_hits", "expected an integer"]),
        ('[[streams]]\nname = "a"\nsource = "x"\n[streams.tracker]\nreid_model = "m.onnx"\ncolor_weight = 0.2\n',
         ["[[streams]] 'a'", "color_weight"]),
        ('streams = 3\n', ["streams must be an array of tables"]),
    ],
)
def test_a_bad_stream_entry_is_one_line_naming_the_stream_and_the_fix(tmp_path: Path, streams: str,
                                                                      fragments: list[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text(streams)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_secret_in_a_bad_stream_source_is_not_echoed(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[streams]]\nname = "a"\nsource = ["rtsp://u:hunter2@h/s"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "hunter2" not in str(err.value)


def test_a_folder_given_as_the_config_file_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a folder, not a config file; pass the TOML file"):
        load_config(tmp_path)
