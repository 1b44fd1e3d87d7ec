"""``build_report``: a finished run's output files -> a static HTML report with PNG charts.

The report is plain files (HTML + PNG, no server, no JavaScript), written beside the results:

- ``index.html``: the run's facts from ``run.json`` and, in influence mode, a table over the test
  triples linking to one page each; in self mode, a histogram of self-influence and the training
  triples with the highest self-influence (the candidates for mislabelled edges);
- ``triple-NNNN.html``: one test triple with its top proponents and opponents (names and scores),
  a bar chart of their influence, a drawing of the test edge with its most influential training
  edges, and, when the run saved ``influence_matrix.npy``, the distribution of influence over all
  training triples.

One job per module: :mod:`.read` (a run's files -> records), :mod:`.csv_rows` (the CSVs' rows,
checked line by line), :mod:`.html` (pages), :mod:`.charts` (matplotlib charts), :mod:`.graph` (the
subgraph through networkx), :mod:`.build` (putting it together, atomically). The pictures need the
optional ``report`` extra (matplotlib, networkx): ``pip install "tracin-lightning[report]"``.
Nothing here imports torch, Lightning or PyKEEN.

Every label and name comes from user files and is escaped before it reaches the HTML.
"""

from __future__ import annotations

from .build import ReportDependencyError, build_report

__all__ = ["ReportDependencyError", "build_report"]
