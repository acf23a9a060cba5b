"""REPORT.md summarises: one row per claim id with "k of n settings" counted by hand, each why
written once, seeds rendered as mean [lo, hi] (n = …), the findings computed from the tables, and
no JSON in the report."""

import csv
import json

from collapipe_jax.report import format_range, short_why, write_report
from collapipe_jax.sweep.claims import claim

WHY_A = "the upload carries the same bits for every policy; the rest is the pipeline time"
WHY_B = "one device is best at m = 1. Eq. 38 gives m below 2"


def synthetic_claims():
    return [
        claim("fig11-vs-random", "DSSRA vs random", -7.12, -11.2, "N=3, paper", True),
        claim("fig11-vs-random", "DSSRA vs random", -7.12, -0.3, "N=6, paper", False, WHY_A),
        claim("fig11-vs-random", "DSSRA vs random", -7.12, -9.7, "N=3, lora", True),
        claim("fig4-best-S-m", "interior optimum", "interior", {"S": 1, "m": 1}, "paper", False, WHY_B),
        claim("fig4-best-S-m", "interior optimum", "interior", {"S": 6, "m": 64}, "consistent", False, WHY_B),
        claim("fig11-vs-loss-only", "DSSRA vs loss-only", -46.44, -0.29, "N=6, paper", False, WHY_A),
        claim("fig11-vs-delay-only", "DSSRA vs delay-only", -15.48, -12.0, "seeds", True, n=5, ci95=(-14.0, -10.0)),
    ]


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The data rows of the first table after `heading`, split into cells."""
    lines = text.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def render(tmp_path, claims, **extra):
    summaries = {"policies": {"sweep": "policies", "scale": "quick", "seconds": 1.0, "claims": claims,
                              "findings": ["a sentence"], "settings": ["N=3"], "best": {"S": 1, "m": [1, 2]}}}
    summaries.update(extra)
    return write_report(tmp_path, summaries).read_text()


def test_summary_has_one_row_per_id_with_k_of_n_counted_by_hand(tmp_path):
    claims = synthetic_claims()
    text = render(tmp_path, claims)
    rows = table_rows(text, "## Claims")
    ids = [r[0] for r in rows]
    # CLAIM_IDS order, each id once
    assert ids == ["fig4-best-S-m", "fig11-vs-loss-only", "fig11-vs-delay-only", "fig11-vs-random"]
    counts = {r[0]: r[4] for r in rows}
    by_hand = {}
    for c in claims:
        k, n = by_hand.get(c["id"], (0, 0))
        by_hand[c["id"]] = (k + c["reproduced"], n + 1)
    assert counts == {cid: f"{k} of {n} setting{'s' if n != 1 else ''}" for cid, (k, n) in by_hand.items()}
    # the measured column is the range over the settings
    random_row = next(r for r in rows if r[0] == "fig11-vs-random")
    assert random_row[3] == "-11.2 – -0.3"
    assert next(r for r in rows if r[0] == "fig4-best-S-m")[3] == "S 1 – 6, m 1 – 64"
    # every setting is in the table after it
    assert len(table_rows(text, "## Claims per setting")) == len(claims)


def test_each_why_is_written_once_and_cited_by_number(tmp_path):
    text = render(tmp_path, synthetic_claims())
    for why in (WHY_A, WHY_B):
        assert text.count(why) == 1
    notes = {line.split(". ", 1)[1]: line.split(". ", 1)[0] for line in text.splitlines()
             if line[:1].isdigit() and ". " in line}
    per_setting = table_rows(text, "## Claims per setting")
    for row, c in zip(per_setting, [c for cid in ("fig4-best-S-m", "fig11-vs-loss-only", "fig11-vs-delay-only",
                                                  "fig11-vs-random") for c in synthetic_claims() if c["id"] == cid]):
        assert row[0] == c["id"] and row[4] == (notes[c["why"]] if c["why"] else "")
    summary = {r[0]: r[5] for r in table_rows(text, "## Claims")}
    assert summary["fig11-vs-random"].endswith(f"note {notes[WHY_A]}")
    assert summary["fig11-vs-delay-only"] == "—"


def test_short_why_keeps_equation_numbers_whole():
    assert short_why(WHY_A) == "the upload carries the same bits for every policy"
    assert short_why(WHY_B) == "one device is best at m = 1"
    assert short_why("m = 1: Eq. 38's stationary m is below 2; more") == "m = 1: Eq. 38's stationary m is below 2"
    # a long first clause stays whole: the summary never cuts a sentence
    assert short_why("word " * 100 + "end; more") == ("word " * 100 + "end")


def test_seeds_render_as_mean_and_interval_and_their_absence_does_not_break(tmp_path):
    text = render(tmp_path, synthetic_claims())
    assert "| fig11-vs-delay-only | seeds | -12 [-14, -10] (n = 5) | yes |" in text
    assert table_rows(text, "## Claims")[2][3] == "-12 [-14, -10] (n = 5)"
    plain = render(tmp_path, [c for c in synthetic_claims() if "n" not in c])
    assert "(n = " not in plain
    two = [claim("fig11-vs-random", "x", -7.0, -8.0, "a", True, n=4, ci95=(-9.0, -7.0)),
           claim("fig11-vs-random", "x", -7.0, -6.0, "b", True, n=5, ci95=(-6.5, -5.5))]
    (row,) = table_rows(render(tmp_path, two), "## Claims")
    assert row[3] == "-8 – -6 (means; 95% intervals within [-9, -5.5], n = 4–5)"


def test_no_json_blob_in_the_report_but_links_to_the_files(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policies.csv").write_text("a\n1\n")
    text = render(tmp_path, synthetic_claims())
    assert not [line for line in text.splitlines() if line.lstrip().startswith(("{", "[", "```", '"'))]
    assert "[`policies.csv`](policies/policies.csv)" in text and "[`summary.json`](policies/summary.json)" in text
    assert json.loads((tmp_path / "claims.json").read_text()) == synthetic_claims()


def test_format_range_by_kind():
    assert format_range([2.0, 2.0]) == "2"
    assert format_range([[3, 5.5], [3.2, 4]]) == "[3 – 3.2, 4 – 5.5]"
    assert format_range([{"a": 1, "b": 2}, {"a": 3}]) == "a 1 – 3, b 2"


def training_summary(latency_by_task):
    final = [{"task": task, "framework": fw, "total_latency_s": v}
             for task, by_fw in latency_by_task.items() for fw, v in by_fw.items()]
    return {"sweep": "training", "scale": "quick", "seconds": 1.0, "final": final}


def test_same_latency_for_the_tasks_is_stated_from_the_training_table(tmp_path):
    same = {"toutiao": {"collapipe": 11.2, "pipeline": 7.5}, "ner": {"collapipe": 11.2, "pipeline": 7.5}}
    text = render(tmp_path, synthetic_claims(), training=training_summary(same))
    finding = text.split("## Findings a reader could misread", 1)[1]
    assert "is the same for the tasks ner, toutiao" in finding and "collapipe 11.2 s, pipeline 7.5 s" in finding
    differ = {"toutiao": {"collapipe": 11.2}, "ner": {"collapipe": 12.0}}
    text = render(tmp_path, synthetic_claims(), training=training_summary(differ))
    assert "differs between tasks" in text and "ner 12 s" in text
    assert "does not depend on its task" in render(tmp_path, synthetic_claims())  # not run: the rule


def write_policies_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["setting", "N", "V", "policy", "total_latency_s", "max_Y"])
        w.writeheader()
        w.writerows(rows)


def test_v_effect_is_read_from_the_policies_table(tmp_path):
    rows = [{"setting": "N=3", "N": 3, "V": v, "policy": "dssra", "total_latency_s": 100.0, "max_Y": 0.0}
            for v in (0.01, 10, 100)]
    rows += [{"setting": "N=6", "N": 6, "V": v, "policy": "dssra", "total_latency_s": t, "max_Y": 0.5}
             for v, t in ((0.01, 200.0), (10, 201.0), (100, 201.0))]
    rows += [{"setting": "N=3", "N": 3, "V": 10, "policy": "random", "total_latency_s": 999.0, "max_Y": 7.0}]
    write_policies_csv(tmp_path / "policies" / "policies.csv", rows)
    finding = render(tmp_path, synthetic_claims()).split("## Findings a reader could misread", 1)[1]
    assert "V changes nothing at N = 3" in finding
    assert "N = 3: DSSRA's total latency is the same for every V, its largest queue Y_n is 0" in finding
    assert "N = 6: DSSRA's total latency moves by at most 0.5% over V, its largest queue Y_n is 0.5" in finding


def test_summary_why_is_a_whole_clause_however_long(tmp_path):
    """The summary's why column was once cut mid-sentence ("… of their …")."""
    long_why = ("synchronous GPipe gives every S and m the gradient of the unsegmented model, so the runs differ "
                "only in the upload noise of their decisions and in nothing the plans choose, over many words; "
                "the second clause stays in the note")
    text = render(tmp_path, [claim("fig11-vs-random", "DSSRA vs random", -7.12, -0.3, "N=6", False, long_why)])
    (row,) = table_rows(text, "## Claims")
    assert row[5] == long_why.split("; ")[0] + "; note 1" and "…" not in row[5]


def test_abstract_latency_names_a_change_whose_positive_sign_reads_slower():
    """The summary once read "least reduction +2,444%" as a reduction: the claim names changes
    (negative = faster) and its why says slower when CollaPipe is slower."""
    from collapipe_jax.sweep.frameworks import latency_why

    def row(name, up, total):
        return {"framework": name, "total_up_s": up, "total_dd_s": 0.0, "total_latency_s": total,
                "violating_rounds": 0, "violated": "", "rounds": 30}

    g = {"collapipe": row("collapipe", 900.0, 1000.0), "pipeline": row("pipeline", 50.0, 100.0),
         "vanilla-fl": row("vanilla-fl", 950.0, 1100.0)}
    changes = {"pipeline": 900.0, "vanilla-fl": 100 * (1000.0 / 1100.0 - 1)}
    why = latency_why(g, changes)
    assert why.startswith("the largest change is against pipeline: +900.0% (CollaPipe slower)")
    assert "reduction" not in why.split(";")[0]
    changes = {"pipeline": -20.0, "vanilla-fl": -9.1}
    assert latency_why(g, changes).startswith("the largest change is against vanilla-fl: -9.1% (CollaPipe faster)")
