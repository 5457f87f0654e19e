"""Pieces of the main report that are not covered by the analyses' own tests."""

import pandas as pd
import pytest

from monet_interp.analyses.report.main import ReportConfig, most_specific_experts, run_report


class _Stats:
    def top_contexts(self, group, i, j):
        # expert (0, 1, 2): two contexts on token 7, one on token 8; others: token 9
        if (group, i, j) == (0, 1, 2):
            return pd.DataFrame({"label": ["py", "py", "py"], "doc": [0, 0, 1], "pos": [1, 2, 0]})
        return pd.DataFrame({"label": ["c"], "doc": [0], "pos": [0]})


class _Corpus:
    docs = {"py": [[1, 7, 7], [8]], "c": [[9]]}

    def documents(self, label, split):
        return self.docs[label]

    def tokenizer(self):
        class Tok:
            def decode(self, ids):
                return f"t{ids[0]}"
        return Tok()


def test_most_specific_experts_filters_ranks_and_counts_tokens():
    experts = pd.DataFrame({
        "group": [0, 0, 1, 1], "i": [1, 3, 4, 5], "j": [2, 3, 4, 6],
        "specialised": [True, True, True, False], "label": ["py", "c", "nl", None],
        "skew": [5.0, 9.0, 50.0, 99.0], "r_top": [0.5, 0.4, 0.9, 0.9],
    })
    # only code labels py/c count; of those, r_top must exceed their median (0.45): expert (0,1,2) only
    table = most_specific_experts(experts, _Stats(), _Corpus(), labels=["py", "c"], n=5)
    assert table[["group", "i", "j", "label"]].values.tolist() == [[0, 1, 2, "py"]]
    assert table["top_tokens"].iloc[0] == "'t7' | 't8'"


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown report sections"):
        run_report(ReportConfig(out=str(tmp_path), sections=("stats", "vibes")))


def test_threads_below_one_are_refused(tmp_path):
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        run_report(ReportConfig(out=str(tmp_path), threads=0))
