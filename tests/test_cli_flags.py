"""One output-flag scheme for every subcommand: -q/--quiet, -v/--verbose (repeatable), and the
old --no-progress kept as a hidden alias of --quiet."""

import importlib

import pytest

from stardist_hier.cli import COMMANDS, build_parser, main
from stardist_hier.commands import _common as C

#: commands whose owner has not switched to add_output_flags yet (strict: remove the mark once done)


def _help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_the_same_flags(name, capsys):
    text = _help(name, capsys)
    assert "-q, --quiet" in text and "-v, --verbose" in text
    assert "--no-progress" not in text  # the alias is hidden


#: the smallest valid command line of each of our subcommands
ARGV = {
    "hierarchy": ["hierarchy"],
    "prepare": ["prepare", "monuseg", "--src", "a", "--out", "b"],
    "evaluate": ["evaluate", "--predictions", "a", "--data", "b"],
    "synth": ["synth", "--out", "a"],
}


@pytest.mark.parametrize("name", sorted(ARGV))
@pytest.mark.parametrize("flags, level", [([], 0), (["-q"], -1), (["--quiet"], -1), (["--no-progress"], -1),
                                          (["-v"], 1), (["-vv"], 2), (["--verbose", "-v"], 2)])
def test_flags_parse_to_one_verbosity(name, flags, level):
    args = build_parser().parse_args(ARGV[name] + flags)
    assert C.verbosity(args) == level
    assert C.show_progress(args) == (level >= 0)


@pytest.mark.parametrize("name", sorted(ARGV))
def test_quiet_and_verbose_together_is_a_usage_error(name, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(ARGV[name] + ["-q", "-v"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_prepare_passes_progress(tmp_path, monkeypatch):
    conv = importlib.import_module("stardist_hier.readers.convert")

    seen = []

    class Summary:
        def format(self, limit=20):
            seen[-1]["limit"] = limit
            return "ok"

    def fake(*a, **k):
        seen.append(k)
        return Summary()

    monkeypatch.setattr(conv, "convert", fake)
    base = ["prepare", "monuseg", "--src", str(tmp_path), "--out", str(tmp_path / "o")]
    for flags, progress, limit in [([], True, 20), (["-q"], False, 20), (["--no-progress"], False, 20),
                                   (["-v"], True, None)]:
        assert main(base + flags) == 0
        assert seen[-1]["progress"] is progress and seen[-1]["limit"] == limit, flags


def test_synth_and_evaluate_pass_progress(tmp_path, monkeypatch):
    import stardist_hier.synth as synth
    from stardist_hier.metrics import folder as E

    seen = []
    monkeypatch.setattr(synth, "generate_all", lambda *a, **k: seen.append(k["progress"]) or [])
    assert main(["synth", "--out", str(tmp_path / "s")]) == 0
    assert main(["synth", "--out", str(tmp_path / "s"), "-q"]) == 0

    monkeypatch.setattr(E, "find_datasets", lambda data, split, dataset: (tmp_path, ["d"]))

    class Result:
        pass

    monkeypatch.setattr(E, "evaluate_folder", lambda *a, **k: seen.append(k["progress"]) or Result())
    monkeypatch.setattr(E, "write_results", lambda r, out: {"per_image": out / "a", "summary_csv": out / "b",
                                                             "summary_json": out / "c"})
    monkeypatch.setattr(E, "format_summary", lambda r: "")
    (tmp_path / "p").mkdir()
    for flags in ([], ["--no-progress"]):
        assert main(["evaluate", "--predictions", str(tmp_path / "p"), "--data", str(tmp_path), *flags]) == 0
    assert seen == [True, False, True, False]
