"""The HTML report of a search study: ``write_report(study, out_dir)`` or ``python -m nas_kd.report``.

Data flows one way: study -> ``report_data`` (plain data) -> ``figures`` (Plotly) -> ``page``
(HTML, written atomically) and ``png`` (the Pareto chart through kaleido).
"""

from nas_kd.report.cli import main
from nas_kd.report.data import report_data
from nas_kd.report.page import write_report

__all__ = ["main", "report_data", "write_report"]
