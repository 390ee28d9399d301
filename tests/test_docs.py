"""The docs that are generated or quoted stay true: docs/performance.md is what its script makes of the checked-in
JSON, the README's summary quotes that page, and no doc links to a file that is not there."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _page_script():
    path = ROOT / "benchmarks" / "performance_page.py"
    spec = importlib.util.spec_from_file_location("performance_page", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_performance_page_is_what_the_json_gives():
    page = _page_script()
    assert (ROOT / "docs" / "performance.md").read_text() == page.render(), (
        "docs/performance.md is stale: run python benchmarks/performance_page.py")
    assert page.main(["--check"]) == 0


def test_performance_page_is_short():
    assert len((ROOT / "docs" / "performance.md").read_text().splitlines()) <= 200


def test_the_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    page = _page_script()
    stale = tmp_path / "performance.md"
    stale.write_text(page.render().replace("540", "541"))
    monkeypatch.setattr(page, "PAGE", stale)
    assert page.main(["--check"]) == 1
    assert page.main([]) == 0 and page.main(["--check"]) == 0  # regenerating fixes it


def test_the_readme_summary_quotes_the_page():
    readme = (ROOT / "README.md").read_text()
    summary = readme.split("\n## Benchmark results\n", 1)[1].split("\n## ", 1)[0]
    page = (ROOT / "docs" / "performance.md").read_text()
    quoted = set(re.findall(r"\d+\.\d+", summary)) | set(re.findall(r"\b\d{3}\b", summary))
    assert quoted, "the README's summary quotes no figure"
    missing = sorted(x for x in quoted if not re.search(rf"(?<![\d.]){re.escape(x)}(?![\d])", page))
    assert not missing, f"README's benchmark summary quotes figures not on docs/performance.md: {missing}"


def test_doc_links_point_at_files_that_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}, not there"


def test_no_link_to_the_frozen_results_file():
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("xpcnn/**/*.py"),
                 *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.sh")]:
        assert "RESULTS.md" not in path.read_text(), f"{path.relative_to(ROOT)} names benchmarks/RESULTS.md"
