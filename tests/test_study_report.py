import base64

from ultracram.report.study_report import ModelResult, write_report


def test_report_markdown_and_self_contained_html(tmp_path):
    curve = [{"elapsed_s": 60.0 * i, "tokens": 1e5 * i, "loss": 8.0 - i} for i in range(4)]
    results = [
        ModelResult("crammed-bert-tiny", 344_449, 3.6e5, 400_000, 5.0, {"SST-2": 80.1, "CoLA": 10.0}, 45.1,
                    ["SST-2", "CoLA"], 1e5, None, curve),
        ModelResult("ultrafastbert-tiny", 311_551, 2.7e5, 400_000, 5.2, {"SST-2": 78.0}, None, [], 1.5e5, None,
                    curve, [[0.9], [0.5]]),
    ]  # fmt: skip
    md, page = write_report(tmp_path, results, {"command": "ultracram study ...", "notes_hidden": True})
    text = md.read_text()
    assert "| crammed-bert-tiny | 80.1 | 10.0 | 45.1 | 0.34 | 0.36 | 400,000 | 5.000 | 100,000 | - |" in text
    assert "| ultrafastbert-tiny | 78.0 | - | - |" in text  # missing scores print as '-'
    for name in ("loss.png", "quality_vs_cost.png", "fff_usage.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
    h = page.read_text()
    assert h.count("data:image/png;base64,") == 3 and "<img" in h and 'src="figures/' not in h
    first = h.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ultracram study ..." in text and "ultracram study ..." in h
