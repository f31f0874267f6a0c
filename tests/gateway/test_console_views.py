"""The operations console's page: both languages, a year of statistics rendered fast and small,
the hooks a browser test relies on, ordering, escaping, empty states and the CSP.

Pages are parsed with a strict tree builder (every non-void HTML element closed, in order;
self-closing tags only for SVG shapes), which also gives the small selector engine used here in
place of a browser.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import time
from dataclasses import replace
from datetime import date, timedelta

import pytest

from gateway.console_views import (
    _TEXT,
    BUCKETS,
    CONTENT_SECURITY_POLICY,
    ConsoleView,
    DayCount,
    FacilityRow,
    FailedCheck,
    Lang,
    PairCount,
    QcLapseGroup,
    ReasonCount,
    RecognitionRow,
    console_page,
    log_scale,
    overall_rate,
)
from tests.html_tree import Node, one, parse, select

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LANGS: tuple[Lang, ...] = ("zh", "en")
HTML_LANG = {"zh": "zh-CN", "en": "en"}
RENDER_BUDGET_S = 0.2  # the target is 50 ms; this leaves room for a slow, busy machine
SIZE_BUDGET = 1_500_000  # bytes of the full-size page


def facility(k: int, **changes: object) -> FacilityRow:
    row = FacilityRow(
        id=f"F{k:03d}",
        name=f"市第{k}人民医院",
        level="三级甲等" if k % 3 else "二级",
        district=f"第{k % 9 + 1}区",
        status="live" if k % 20 else "pending",
        imaging="DICOMweb" if k % 4 else "DIMSE",
        lab="FHIR" if k % 5 else "HL7 v2",
        reachable=True,
        latency_ms=20.0 + k,
        error_rate=0.001 * (k % 7),
        breaker="closed",
    )
    return replace(row, **changes)  # type: ignore[arg-type]


def days(n: int, start: date = date(2025, 11, 26)) -> tuple[DayCount, ...]:
    rng = random.Random(n)
    return tuple(
        DayCount(
            (start + timedelta(days=k)).isoformat(), 0 if k % 11 == 0 else rng.randint(1, 9000)
        )
        for k in range(n)
    )


def full_view(*, details: bool = True) -> ConsoleView:
    """A year of a 111-facility network: 366 days, 12,000 facility pairs."""
    facilities = tuple(facility(k) for k in range(1, 112))
    facilities = (
        *facilities[:40],
        replace(facilities[40], reachable=False, breaker="open"),  # F041
        *facilities[41:70],
        replace(facilities[70], breaker="open"),  # F071
        *facilities[71:100],
        replace(facilities[100], reachable=False),  # F101
        replace(facilities[101], reachable=None, latency_ms=None, error_rate=None),  # F102
        replace(facilities[102], status="disabled", breaker="half-open"),
        *facilities[103:],
    )
    rng = random.Random(7)
    grid = [(r.id, h.id) for r in facilities for h in facilities]
    chosen = rng.sample(grid, 12_000)
    pairs = tuple(PairCount(r, h, int(10 ** rng.uniform(0, 5))) for r, h in chosen)
    by_day = days(366)
    holders = tuple(
        RecognitionRow(f.id, f.name, 200 + k, 150 + k, 30, (150 + k) / (180 + k))
        for k, f in enumerate(facilities)
    )
    items = tuple(
        RecognitionRow(f"item-{k}", f"检验项目 {k}", 100, 60 + k, 40 - k, (60 + k) / 100)
        for k in range(40)
    )
    reasons = (
        ReasonCount("R01", "病情变化", 300, False),
        ReasonCount("R02", "结果超过有效期", 120, True),
        ReasonCount("R03", "质量不合格", 45, True),
        ReasonCount("R04", "患者要求", 9, False),
    )
    checks = tuple(
        FailedCheck(f"F{k:03d}", f"2026-11-2{k % 5} 03:00", ("qido-search", "wado-rs"), f"/c/{k}")
        for k in (41, 101)
    )
    return ConsoleView(
        generated="2026-11-25 10:30",
        period="2025-11-26 – 2026-11-25",
        facilities=facilities,
        lookups_by_day=by_day,
        lookups_total=sum(d.count for d in by_day),
        pairs=pairs,
        recognition_by_holder=holders,
        recognition_by_item=items,
        retest_reasons=reasons,
        failed_checks=checks,
        qc_lapsing=(
            QcLapseGroup(
                "lab", "2026-12-31", 36, tuple((f"F{k:03d}", f"医院{k}") for k in range(27))
            ),
            QcLapseGroup("imaging", "2026-12-31", 36, tuple((f.id, f.name) for f in facilities)),
        ),
        qc_warning_days=60,
        show_facility_details=details,
    )


def small_view() -> ConsoleView:
    facilities = (
        facility(3),
        facility(12, reachable=False),
        facility(7, breaker="open"),
        facility(1, reachable=None, latency_ms=None, error_rate=None, status="pending"),
        facility(2, status="disabled", imaging="none", lab="none"),
    )
    return ConsoleView(
        generated="2026-11-25 10:30",
        period="2026-11-19 – 2026-11-25",
        facilities=facilities,
        lookups_by_day=days(7, date(2026, 11, 19)),
        lookups_total=1_234_567,
        pairs=(
            PairCount("F003", "F012", 1234),
            PairCount("F012", "F003", 1),
            PairCount("F007", "F003", 0),
        ),
        recognition_by_holder=(
            RecognitionRow("F003", "市第3人民医院", 100, 80, 20, 0.8),
            RecognitionRow("F012", "市第12人民医院", 10, 10, 0, 1.0),
        ),
        recognition_by_item=(RecognitionRow("2345-7", "血糖", 50, 45, 5, 0.9),),
        retest_reasons=(
            ReasonCount("R01", "病情变化", 3, False),
            ReasonCount("R02", "过期", 7, True),
        ),
        failed_checks=(FailedCheck("F012", "2026-11-25 03:00", ("capability",), "/admin/c/1"),),
        qc_lapsing=(
            QcLapseGroup("imaging", "2026-12-01", 6, (("F047", "市第47人民医院"),)),
            QcLapseGroup("lab", "2026-12-31", 36, (("F003", "市第3人民医院"), ("F012", "市第12"))),
        ),
        qc_warning_days=45,
        show_facility_details=True,
    )


def empty_view(*, details: bool = True) -> ConsoleView:
    return ConsoleView(
        generated="2026-11-25 10:30",
        period="2026-11-25 – 2026-11-25",
        facilities=(),
        lookups_by_day=(),
        lookups_total=0,
        pairs=(),
        recognition_by_holder=(),
        recognition_by_item=(),
        retest_reasons=(),
        failed_checks=(),
        qc_lapsing=(),
        qc_warning_days=60,
        show_facility_details=details,
    )


def evil_view() -> ConsoleView:
    """Every text hostile."""
    return ConsoleView(
        generated=EVIL,
        period=EVIL,
        facilities=(FacilityRow(EVIL, EVIL, EVIL, EVIL, EVIL, EVIL, EVIL, False, 1.0, 0.5, EVIL),),
        lookups_by_day=(DayCount(EVIL, 3), DayCount(EVIL, 5)),
        lookups_total=8,
        pairs=(PairCount(EVIL, "F1", 4), PairCount("F1", EVIL, 2)),
        recognition_by_holder=(RecognitionRow(EVIL, EVIL, 1, 1, 0, 1.0),),
        recognition_by_item=(RecognitionRow(EVIL, EVIL, 1, 0, 1, 0.0),),
        retest_reasons=(ReasonCount(EVIL, EVIL, 1, False),),
        failed_checks=(
            FailedCheck(EVIL, EVIL, (EVIL,), '/r?a="><x>'),
            FailedCheck("F1", "now", ("p",), "javascript:alert(1)"),
            FailedCheck("F1", "now", ("p",), "https://elsewhere.example/r"),
            FailedCheck("F1", "now", ("p",), "//elsewhere.example/r"),
        ),
        qc_lapsing=(QcLapseGroup("lab", EVIL, 1, ((EVIL, EVIL),)),),
        qc_warning_days=60,
        show_facility_details=True,
    )


def all_pages(lang: Lang) -> dict[str, str]:
    return {
        "small": console_page(lang, small_view()),
        "full": console_page(lang, full_view()),
        "regulator": console_page(lang, full_view(details=False)),
        "empty": console_page(lang, empty_view()),
        "evil": console_page(lang, evil_view()),
    }


Rendered = dict[Lang, dict[str, tuple[str, Node]]]


@pytest.fixture(scope="module")
def pages() -> Rendered:
    """Every sample page in both languages, rendered and parsed once: (HTML, tree)."""
    return {
        lang: {name: (page, parse(page)) for name, page in all_pages(lang).items()}
        for lang in LANGS
    }


def sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# --- Every page -----------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_every_page_is_a_well_formed_offline_html5_document(lang: Lang, pages: Rendered) -> None:
    other = "en" if lang == "zh" else "zh"
    for name, (page, root) in pages[lang].items():
        assert page.startswith("<!DOCTYPE html>\n"), name
        assert one(root, "html").attrs["lang"] == HTML_LANG[lang], name
        assert one(root, "meta[charset]").attrs["charset"] == "utf-8", name
        assert one(root, "head title").text.strip(), name
        assert len(select(root, "head style")) == 1, name
        switch = one(root, "a.lang")
        assert switch.attrs["href"] == f"?lang={other}", name
        assert switch.attrs["lang"] == HTML_LANG[other], name
        # Nothing from the internet, not even an SVG namespace: HTML5 needs none inline.
        assert "http://" not in page and "https://" not in page, name
        assert "xmlns" not in page, name
        assert not select(root, "link") and not select(root, "script") and not select(root, "img")
        for node in root.descendants():
            for attr in ("src", "href", "action"):
                assert "//" not in node.attrs.get(attr, ""), (name, node.attrs)
        # No inline handlers or style attributes (the CSP would block them anyway).
        assert not re.search(r"\son[a-z]+=|\sstyle=", page), name
        ids = [n.attrs["id"] for n in root.descendants() if "id" in n.attrs]
        assert len(ids) == len(set(ids)), (name, sorted(i for i in ids if ids.count(i) > 1))
        order = [n.attrs["id"] for n in select(root, "main section")]
        assert order == ["facilities", "lookups", "heatmap-section", "recognition", "checks"]
        for a in select(root, "nav.jump a"):
            assert a.attrs["href"][1:] in ids, name


@pytest.mark.parametrize("lang", LANGS)
def test_the_policy_allows_exactly_the_inline_style(lang: Lang, pages: Rendered) -> None:
    for name, (_, root) in pages[lang].items():
        assert sha(one(root, "head style").text) in CONTENT_SECURITY_POLICY, name
    assert "script-src 'none'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY


def test_both_languages_have_the_same_words() -> None:
    assert _TEXT["zh"].keys() == _TEXT["en"].keys()
    differing = [k for k in _TEXT["zh"] if _TEXT["zh"][k] == _TEXT["en"][k]]
    assert differing == [], differing


def test_words_follow_the_language() -> None:
    zh, en = parse(console_page("zh", small_view())), parse(console_page("en", small_view()))
    assert one(zh, "header h1").text == "互认网络运行监控"
    assert one(en, "header h1").text == "Huren operations console"
    assert one(zh, "#facilities h2").text == "机构与接口"
    assert one(en, "#facilities h2").text == "Facilities and endpoints"
    assert one(zh, "a.lang").text == "English" and one(en, "a.lang").text == "中文"
    assert "2026-11-19 – 2026-11-25" in one(zh, "#period").text
    assert "2026-11-25 10:30" in one(en, "#generated").text


# --- A year of statistics -------------------------------------------------------------------


def test_a_year_of_statistics_renders_fast_and_small() -> None:
    view = full_view()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        page = console_page("zh", view)
        times.append(time.perf_counter() - start)
    size = len(page.encode())
    print(f"\nfull-size console: best {min(times) * 1000:.1f} ms, {size:,} bytes")
    assert min(times) < RENDER_BUDGET_S
    assert size < SIZE_BUDGET
    root = parse(page)
    assert len(select(root, "#facility-table tr.facility")) == 111
    assert len(select(root, "svg#lookups-chart rect.bar")) == 366
    assert len(select(root, "svg#heatmap rect.cell")) == 12_000


def test_the_facility_table_puts_problems_first(pages: Rendered) -> None:
    root = pages["en"]["full"][1]
    rows = select(root, "#facility-table tr.facility")
    order = [r.attrs["data-id"] for r in rows]
    assert order[:3] == ["F041", "F071", "F101"]
    assert order[3:] == sorted(order[3:])
    assert [r.attrs["data-id"] for r in rows if "problem" in r.classes] == order[:3]
    f041, f071, f101 = rows[:3]
    # Never colour alone: a mark and a word beside every dot.
    assert (
        one(f041, "td.reach").text == "✗ unreachable"
        and "reach-no" in one(f041, "td.reach").classes
    )
    assert (
        one(f041, "td.breaker").text == "open" and "breaker-open" in one(f041, "td.breaker").classes
    )
    assert one(f071, "td.reach").text == "✓ reachable"
    assert one(f101, "td.breaker").text == "closed"
    unprobed = one(root, "tr.facility[data-id=F102]")
    assert one(unprobed, "td.reach").text == "– not probed"
    assert [c.text for c in select(unprobed, "td.num")] == ["–", "–"]
    half = one(root, "tr.facility[data-id=F103]")
    assert one(half, "td.breaker").text == "half-open" and half.attrs["data-status"] == "disabled"
    assert len(one(root, "#facility-table thead tr").children) == 11


def test_facility_cells_are_formatted() -> None:
    zh = parse(console_page("zh", small_view()))
    rows = select(zh, "#facility-table tr.facility")
    assert [r.attrs["data-id"] for r in rows] == ["F007", "F012", "F001", "F002", "F003"]
    f003 = rows[-1]
    cells = [c.text for c in f003.children]
    assert cells[:7] == ["F003", "市第3人民医院", "二级", "第4区", "已接入", "DICOMweb", "FHIR"]
    assert cells[7:] == ["✓ 可达", "23 ms", "0.3%", "正常"]
    f002 = rows[3]
    assert [c.text for c in f002.children][4:7] == ["已停用", "无", "无"]
    assert one(rows[1], "td.reach").text == "✗ 不可达"
    assert one(rows[0], "td.breaker").text == "已熔断"


def test_regulators_see_statistics_without_endpoint_details(pages: Rendered) -> None:
    root = pages["zh"]["regulator"][1]
    rows = select(root, "#facility-table tr.facility")
    order = [r.attrs["data-id"] for r in rows]
    assert len(rows) == 111 and order == sorted(order)
    assert not select(root, "#facility-table td.reach") and not select(root, "td.breaker")
    assert not select(root, "tr.problem")
    assert len(one(root, "#facility-table thead tr").children) == 7
    # The headline still counts what is reachable; the statistics are all there.
    assert one(root, "#stat-reachable").text.startswith("108")
    assert len(select(root, "svg#heatmap rect.cell")) == 12_000


def test_headline_numbers(pages: Rendered) -> None:
    view = full_view()
    root = pages["en"]["full"][1]
    assert one(root, "#stat-live").text == "105"
    assert one(root, "#stat-pending").text == "5"
    assert one(root, "#stat-disabled").text == "1"
    reachable = one(root, "#stat-reachable")
    assert reachable.text.startswith("108") and "2 unreachable" in reachable.text
    assert "1 not probed" in reachable.text and "of 110 probed" in reachable.text
    assert one(root, "#stat-lookups").text.startswith(f"{view.lookups_total:,}")
    rate, decisions = overall_rate(view.recognition_by_holder)
    assert rate is not None
    assert one(root, "#stat-recognition").text.startswith(f"{rate * 100:.1f}%")
    assert f"{decisions:,} decisions" in one(root, "#stat-recognition").text
    small = parse(console_page("zh", small_view()))
    assert one(small, "#stat-lookups").text.startswith("1,234,567")
    assert one(small, "#stat-recognition").text.startswith("81.8%")  # (80+10)/(80+10+20)


def test_the_lookups_chart_has_a_bar_and_a_title_per_day(pages: Rendered) -> None:
    view = small_view()
    root = parse(console_page("en", view))
    chart = one(root, "svg#lookups-chart")
    assert "viewbox" in chart.attrs and "aria-label" in chart.attrs
    days_ = select(chart, "g.day")
    assert len(days_) == len(select(chart, "rect.bar")) == 7
    for g, d in zip(days_, view.lookups_by_day, strict=True):
        assert one(g, "title").text == f"{d.day}: {d.count:,}"
    zero = select(chart, "rect.bar")[0]
    assert view.lookups_by_day[0].count == 0 and float(zero.attrs["height"]) == 0
    ticks = [t.text for t in select(chart, "g.axis text")]
    assert "0" in ticks and "11-19" in ticks
    assert "1,234,567 in the period" in one(root, "#lookups-total").text
    year = pages["en"]["full"][1]
    ticks = [t.text for t in select(year, "svg#lookups-chart g.axis text")]
    assert "2026-01" in ticks and "2026-11" in ticks
    assert len(select(year, "svg#lookups-chart polyline.avg")) == 1


def test_the_heat_map_has_a_cell_per_pair_on_a_log_scale(pages: Rendered) -> None:
    view = full_view()
    root = pages["en"]["full"][1]
    heat = one(root, "svg#heatmap")
    cells = select(heat, "rect.cell")
    assert len(cells) == 12_000
    counts = {(p.requester, p.holder): p.count for p in view.pairs}
    top = max(counts.values())
    scale = log_scale(top)
    for cell in cells[::97]:
        assert set(cell.attrs) == {"class", "x", "width", "height"}
        assert all(cell.attrs[a].isdigit() for a in ("x", "width", "height"))
        m = re.fullmatch(r"(F\d{3}) → (F\d{3}): ([\d,]+)", one(cell, "title").text)
        assert m is not None
        count = counts[(m.group(1), m.group(2))]
        assert m.group(3) == f"{count:,}"
        bucket = min(int(math.log(count) * scale), BUCKETS - 1)
        assert cell.classes == {"cell", f"b{bucket}"}
    # Rows are groups translated to whole pixels, in facility order.
    rows = [g for g in select(heat, "g") if g.attrs.get("transform", "").startswith("translate(0,")]
    assert all(re.fullmatch(r"translate\(0,\d+\)", g.attrs["transform"]) for g in rows)
    legend = select(root, "#heatmap-legend li")
    assert 2 <= len(legend) <= BUCKETS
    assert legend[0].text.startswith("1–") and legend[-1].text.endswith(f"{top:,}")


def test_the_heat_map_of_a_few_pairs() -> None:
    root = parse(console_page("en", small_view()))
    cells = select(root, "svg#heatmap rect.cell")
    assert [one(c, "title").text for c in cells] == ["F003 → F012: 1,234", "F012 → F003: 1"]
    assert [c.classes for c in cells] == [{"cell", "b7"}, {"cell", "b0"}]
    labels = [t.text for t in select(root, "svg#heatmap g.labels text")]
    assert labels == ["F003", "F003", "F012", "F012"]  # a zero pair brings in no facility


def test_log_scale_buckets_and_legend_cover_every_count() -> None:
    for top in (1, 2, 3, 10, 255, 99_999):
        view = replace(
            empty_view(),
            pairs=(
                *(PairCount(f"R{c}", "H", c) for c in range(1, min(top, 300) + 1)),
                PairCount("R-top", "H", top),
            ),
        )
        root = parse(console_page("en", view))
        legend = [li.text for li in select(root, "#heatmap-legend li")]
        covered: list[int] = []
        for text in legend:
            lo, _, hi = text.replace(",", "").partition("–")
            covered += list(range(int(lo), int(hi or lo) + 1))
        assert covered == list(range(1, top + 1)), (top, legend)


def test_recognition_and_reasons() -> None:
    root = parse(console_page("en", small_view()))
    holders = select(root, "#recognition-by-holder tbody tr")
    assert [r.attrs["data-key"] for r in holders] == ["F003", "F012"]
    assert one(holders[0], "td.rate").text == "80.0%"
    fills = [r for r in select(holders[0], "svg.rbar rect") if "track" not in r.classes]
    assert fills[0].attrs["width"] == "80.0"
    assert one(one(root, "#recognition-by-item"), "td.rate").text == "90.0%"
    reasons = select(root, "#retest-reasons tbody tr")
    assert [r.attrs["data-code"] for r in reasons] == ["R02", "R01"]  # most first
    assert "not-counted" in reasons[1].classes and one(reasons[1], ".tag").text == "not counted"
    assert not select(reasons[0], ".tag")


def test_quality_control_ending_soon_is_a_warning() -> None:
    """Facilities whose QC passes end within the window: counted once in the headline (with
    the first day), and listed by day and kind with their names."""
    en = parse(console_page("en", small_view()))
    stat = one(en, "#stat-qc")
    assert stat.text == "3first 2026-12-01"  # F047, F003, F012
    assert any("warn" in dl.classes for dl in select(en, "dl.stat") if select(dl, "#stat-qc"))
    rows = select(en, "#qc-table tr.qc-lapse")
    assert [r.attrs["data-kind"] for r in rows] == ["imaging", "lab"]
    cells = [[c.text for c in select(r, "td")][:3] for r in rows]
    assert cells == [["Imaging QC", "2026-12-01", "6"], ["Lab (EQA)", "2026-12-31", "36"]]
    assert one(rows[1], "summary").text == "2 facilities"
    assert [p.text for p in select(rows[1], ".probe")] == ["F003", "F012"]
    assert select(rows[1], ".probe")[0].attrs["title"] == "市第3人民医院"
    assert "45 days" in one(en, "#qc-lapsing p.note").text
    zh = parse(console_page("zh", small_view()))
    assert one(select(zh, "#qc-table tr.qc-lapse")[0], "summary").text == "1 家"
    assert not select(zh, "#qc-none")


def test_failed_checks_link_to_their_reports() -> None:
    zh = parse(console_page("zh", small_view()))
    row = one(zh, "#checks-table tr.check")
    assert row.attrs["data-facility"] == "F012" and "市第12人民医院" in row.text
    assert [p.text for p in select(row, ".probe")] == ["capability"]
    assert one(row, "a.report").attrs["href"] == "/admin/c/1"
    en = parse(console_page("en", small_view()))
    assert one(en, "#checks-table a.report").attrs["href"] == "/admin/c/1?lang=en"
    assert not select(zh, "#checks-none")


# --- Escaping and empty states --------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_every_value_is_escaped(lang: Lang, pages: Rendered) -> None:
    page, root = pages[lang]["evil"]
    assert EVIL not in page and ESCAPED in page
    assert "<x>" not in page
    assert not select(root, "script") and not select(root, "x")
    assert EVIL in one(root, "#facility-table td.name").text
    cells = select(root, "svg#heatmap rect.cell")
    assert {one(c, "title").text for c in cells} == {f"{EVIL} → F1: 4", f"F1 → {EVIL}: 2"}
    links = [a.attrs["href"] for a in select(root, "#checks-table a")]
    # Only links on this site: no javascript:, no other host.
    assert links == ['/r?a="><x>' + ("&lang=en" if lang == "en" else "")]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("details", [True, False])
def test_an_empty_view_renders_calm_empty_states(lang: Lang, details: bool) -> None:
    root = parse(console_page(lang, empty_view(details=details)))
    assert not select(root, "svg")
    for sid in ("facilities", "lookups", "heatmap-section"):
        assert len(select(root, f"#{sid} p.empty")) == 1, sid
    assert len(select(root, "#recognition p.empty")) == 4  # by holder, item, reason; QC ends
    assert select(root, "#checks-none") and select(root, "#qc-none")
    assert one(root, "#stat-qc").text == "0" and "warn" not in one(root, "#stat-qc").classes
    assert one(root, "#stat-recognition").text.startswith("–")
    assert one(root, "#stat-lookups").text == "0"
    # Days without a single look-up are an empty state too, not a flat chart.
    quiet = replace(empty_view(), lookups_by_day=(DayCount("2026-11-25", 0),))
    assert not select(parse(console_page(lang, quiet)), "svg#lookups-chart")
