"""User mistakes and unkind environments: a clear message and the right exit status
(2 for usage and recipe errors, 1 for build failures), never a traceback."""

from __future__ import annotations

from edgebuild.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_names_an_unknown_target_and_lists_the_targets(tiny, capsys):
    code, _, err = run(["explain", str(tiny.recipe), "unknown:convert", *tiny.args()], capsys)
    assert code == 2
    assert "no target named 'unknown' (targets: rpi4, pixel)" in err, err
    assert "{" not in err and "TARGET:KIND" not in err  # the step was named right

    code, _, err = run(["explain", str(tiny.recipe), "unknown", *tiny.args()], capsys)
    assert code == 2
    assert "no target named 'unknown' (targets: rpi4, pixel)" in err
    assert "name a step as TARGET:KIND, e.g. rpi4:convert" in err

    code, _, err = run(["explain", str(tiny.recipe), "pixel", *tiny.args()], capsys)
    assert code == 2
    assert "name a step as TARGET:KIND, e.g. pixel:convert (the steps of 'pixel': " \
           "convert, quantize, baseline, validate, bundle)" in err, err
    assert "Traceback" not in err
