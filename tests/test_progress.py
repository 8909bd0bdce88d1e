"""Progress display: plain, complete lines when output is not a terminal (logs, CI)."""

from ultracram.progress import ProgressDisplay


def test_log_mode_prints_whole_lines_at_most_every_interval_and_at_close(capsys):
    info = "step 7 loss 6.123 " + "x" * 200  # longer than any terminal: must not be cut
    display = ProgressDisplay("pretraining", 100, every_s=3600)
    display.update(10, "first")
    display.update(50, info)  # within the interval: no line
    display.close()
    display.close()  # idempotent
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("pretraining:  10.0%") and lines[0].endswith("first")
    assert " left " in lines[0]
    assert lines[1].startswith("pretraining:  50.0%") and lines[1].endswith(info)
    assert "…" not in "".join(lines)


def test_every_update_prints_with_zero_interval_and_eta_can_be_left_out(capsys):
    display = ProgressDisplay("prepare", 4, every_s=0.0, eta=False)
    for done in range(5):
        display.update(done, f"{done} docs")
    display.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == [
        "0.0%",
        "25.0%",
        "50.0%",
        "75.0%",
        "100.0%",
    ]  # the last once
    assert not any(" left " in line for line in lines)


def test_disabled_display_prints_nothing(capsys):
    display = ProgressDisplay("pretraining", 1.0, enabled=False)
    display.update(0.5, "hidden")
    display.close()
    assert capsys.readouterr().out == ""
