"""Screenshots of what an operator sees first (issue 17, point 6): a table's lag check (its
result's description says how far behind, as time, and which version serves) and the
lineage graph with the table selected, from a running Dagster (`make demo`,
`bench/event_rows.py`).

    .venv/bin/python bench/ui_health.py http://127.0.0.1:3000 docs/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup_pipeline.orchestration import checks
from backup_pipeline_tests.browser import browser_page, dismiss_dialogs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--table", default="bekreftelser")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with browser_page() as page:
        # The lag check's latest result: "v1 serves; 3 s behind (under 1 min), lag 41 records".
        page.goto(f"{url}/assets/{args.table}?view=checks")
        dismiss_dialogs(page)
        page.get_by_text(checks.LAG).first.click()
        page.get_by_text("serves;").first.wait_for()
        page.screenshot(path=str(args.out / "ui-health-lag-check.png"))

        # The lineage graph with the table selected: its checks' state on the node, the
        # serving version and last record time of its latest materialization beside it.
        page.goto(f"{url}/locations/backup_pipeline/asset-groups/kafka_backup")
        dismiss_dialogs(page)
        page.get_by_text(args.table, exact=True).first.click()
        page.get_by_text("serving_version").first.wait_for()
        page.screenshot(path=str(args.out / "ui-health-lineage.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
