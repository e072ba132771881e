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
    for section in cfg.__dataclass_fields__:
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
