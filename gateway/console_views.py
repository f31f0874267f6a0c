"""The operations console (``/admin``): one server-rendered HTML5 page of the network's state.

Read by the people who run the network and by the health commission that supervises it, on a
laptop (1366×768 and up). A pure function from frozen view data to `str`, in the style of
`gateway.portal_views`: the aiohttp handler that gathers the data lives elsewhere. The page
carries its CSS inline, draws its charts as inline SVG built here (hover text through SVG
``<title>`` elements), and has no JavaScript and nothing fetched from anywhere: it works
offline, and `CONTENT_SECURITY_POLICY` allows exactly its inline style, by hash.

Every value from the view goes through `html.escape`; links are kept to this site (a link
with a scheme or a host is not rendered). The view holds statistics and the health of
facility endpoints, never patient data. With ``show_facility_details`` off (regulators), the
facility table leaves out the endpoint health columns (reachability, latency, error rate,
breaker); the headline still counts reachable facilities.

Built for a year of statistics: 366 days of look-ups and ~12,000 facility pairs render in
well under 50 ms. The heat map is the bulk of the page, so it is one ``<rect>`` per non-zero
pair with integer coordinates, rows as translated groups (no y per cell), the colour as one
of eight classes ``b0``..``b7`` of a logarithmic scale, escaped labels computed once per
facility.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from .page_text import HTML_LANG, OTHER_LANG, csp_hash, words
from .page_text import Lang as Lang  # re-exported: the pages' callers name it from here


@dataclass(frozen=True, slots=True)
class FacilityRow:
    """One facility of the network and the health of its endpoints."""

    id: str
    name: str
    level: str
    district: str
    status: str  # "live" | "pending" | "disabled"
    imaging: str  # "DICOMweb", "DIMSE", "none"
    lab: str  # "FHIR", "HL7 v2", "none"
    reachable: bool | None  # None: not probed yet
    latency_ms: float | None
    error_rate: float | None  # 0..1 over the recent window
    breaker: str  # "closed" | "open" | "half-open"


@dataclass(frozen=True, slots=True)
class DayCount:
    """Look-ups on one day ("2026-11-24"); days in order, days without look-ups included."""

    day: str
    count: int


@dataclass(frozen=True, slots=True)
class PairCount:
    """Look-ups by the `requester` facility of results held by the `holder` (facility ids)."""

    requester: str
    holder: str
    count: int


@dataclass(frozen=True, slots=True)
class RecognitionRow:
    """Recognition of results by one holding facility or of one item; `rate` is None without
    counted decisions."""

    key: str
    label: str
    decisions: int
    accepted: int
    retests_counted: int
    rate: float | None


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """Re-tests for one reason; `counts_against` False: left out of the recognition rate."""

    code: str
    label: str
    count: int
    counts_against: bool


@dataclass(frozen=True, slots=True)
class FailedCheck:
    """A recent conformance check that failed: the names of its failed probes and a link to
    its readable report."""

    facility: str
    when: str
    failed: tuple[str, ...]
    href: str


@dataclass(frozen=True, slots=True)
class QcLapseGroup:
    """Facilities whose quality control of one kind ends on one day (the region publishes
    passes for a year at a time, so whole groups end together)."""

    kind: str  # lab | imaging
    covered_until: str  # "2026-12-31"
    days_left: int
    facilities: tuple[tuple[str, str], ...]  # (id, name)


@dataclass(frozen=True, slots=True)
class ConsoleView:
    """Everything the console shows."""

    generated: str  # "2026-11-25 10:30"
    period: str  # "2025-11-26 – 2026-11-25"
    facilities: tuple[FacilityRow, ...]
    lookups_by_day: tuple[DayCount, ...]  # up to ~366 days
    lookups_total: int
    pairs: tuple[PairCount, ...]  # up to 111*111 non-zero pairs
    recognition_by_holder: tuple[RecognitionRow, ...]
    recognition_by_item: tuple[RecognitionRow, ...]
    retest_reasons: tuple[ReasonCount, ...]
    failed_checks: tuple[FailedCheck, ...]
    qc_lapsing: tuple[QcLapseGroup, ...]  # soonest first
    qc_warning_days: int
    # Regulators see statistics; operators also see endpoint health details (never patient
    # data either way).
    show_facility_details: bool


# --- The words ------------------------------------------------------------------------------
# Plain text only (escaped on use); {name} fields are filled with escaped values.

_ZH: Final[dict[str, str]] = {
    "console": "互认网络运行监控",
    "switch": "English",
    "period": "统计期间：{period}",
    "generated": "生成时间：{when}",
    "jump": "跳转到",
    "headline": "概况",
    "stat_live": "已接入机构",
    "stat_pending": "待接入机构",
    "stat_disabled": "已停用机构",
    "stat_reachable": "当前可达",
    "stat_lookups": "期内调阅",
    "stat_recognition": "总体互认率",
    "of_probed": "已探测 {n} 家",
    "unreachable_n": "{n} 家不可达",
    "not_probed_n": "{n} 家未探测",
    "per_day": "日均 {n}",
    "decisions_n": "{n} 次互认决定",
    "no_decisions": "暂无互认决定",
    "facilities": "机构与接口",
    "facilities_note": "共 {n} 家机构；需要处理的（不可达或已熔断）排在最前。",
    "facilities_note_plain": "共 {n} 家机构，按编号排列。接口健康详情仅向运维人员显示。",
    "problems_n": "{n} 家需要处理",
    "no_facilities": "尚未登记任何机构。",
    "col_id": "编号",
    "col_name": "名称",
    "col_level": "等级",
    "col_district": "区县",
    "col_status": "状态",
    "col_imaging": "影像接口",
    "col_lab": "检验接口",
    "col_reach": "可达性",
    "col_latency": "延迟",
    "col_errors": "错误率（15分钟）",
    "col_breaker": "熔断器",
    "status_live": "已接入",
    "status_pending": "待接入",
    "status_disabled": "已停用",
    "none": "无",
    "reach_yes": "✓ 可达",
    "reach_no": "✗ 不可达",
    "reach_unknown": "– 未探测",
    "breaker_closed": "正常",
    "breaker_open": "已熔断",
    "breaker_half-open": "半开",
    "lookups": "每日调阅量",
    "lookups_total": "期内合计 {n} 次",
    "lookups_peak": "最高 {day}：{n} 次",
    "lookups_chart": "每日调阅量柱状图，{days} 天，合计 {n} 次",
    "lookups_avg": "7 日平均",
    "lookups_hint": "鼠标停在柱上可查看当日数量。",
    "no_lookups": "本期间暂无调阅。",
    "heatmap": "机构间调阅热力图",
    "heatmap_note": "行：调阅方；列：结果持有方；按机构编号排列。颜色为对数刻度，空白表示无调阅。",
    "heatmap_stats": "{n} 家机构之间共有 {pairs} 组调阅关系，单组最多 {max} 次。",
    "heatmap_chart": "机构间调阅热力图：{n} 家机构，{pairs} 组调阅关系",
    "heatmap_legend": "调阅次数（对数刻度）",
    "no_pairs": "本期间暂无机构间调阅。",
    "recognition": "结果互认",
    "recognition_note": (
        "互认率 = 接受 ÷（接受 + 计入的复查），只计互认范围内的结果；不计入互认率的复查原因已排除。"
    ),
    "by_holder": "按结果持有机构",
    "by_item": "按检查检验项目",
    "reasons": "复查原因",
    "col_holder": "持有机构",
    "col_item": "项目",
    "col_decisions": "决定",
    "col_accepted": "接受",
    "col_retests": "计入复查",
    "col_rate": "互认率",
    "col_reason": "原因",
    "col_count": "次数",
    "not_counted": "不计入互认率",
    "not_counted_legend": "标“不计入互认率”的原因（如病情变化）不影响互认率。",
    "no_recognition": "本期间暂无互认决定。",
    "no_reasons": "本期间暂无复查。",
    "checks": "一致性检查",
    "checks_note": "最近未通过的一致性检查。",
    "col_facility": "机构",
    "col_when": "时间",
    "col_failed": "未通过的检查项",
    "col_report": "报告",
    "report": "查看报告",
    "no_checks": "✓ 近期没有未通过的一致性检查。",
    "qc": "质控到期提醒",
    "qc_note": (
        "{days} 天内质控合格期满的机构：期满后其新出的结果不再标注 HR、不再互认，"
        "直至发布下一期质控结果。"
    ),
    "col_kind": "类别",
    "col_until": "合格至",
    "col_days_left": "剩余天数",
    "col_facilities": "机构",
    "kind_lab": "检验（室间质评）",
    "kind_imaging": "影像（质控）",
    "facilities_n": "{n} 家",
    "no_qc": "✓ {days} 天内没有质控合格期满的机构。",
    "stat_qc": "质控即将期满",
    "qc_first": "最早 {day}",
}

_EN: Final[dict[str, str]] = {
    "console": "Huren operations console",
    "switch": "中文",
    "period": "Period: {period}",
    "generated": "Generated {when}",
    "jump": "Jump to",
    "headline": "Overview",
    "stat_live": "Facilities live",
    "stat_pending": "Pending",
    "stat_disabled": "Disabled",
    "stat_reachable": "Reachable now",
    "stat_lookups": "Look-ups in the period",
    "stat_recognition": "Recognition rate",
    "of_probed": "of {n} probed",
    "unreachable_n": "{n} unreachable",
    "not_probed_n": "{n} not probed",
    "per_day": "{n} a day on average",
    "decisions_n": "{n} decisions",
    "no_decisions": "No decisions yet",
    "facilities": "Facilities and endpoints",
    "facilities_note": "{n} facilities; those needing attention (unreachable, breaker open) first.",
    "facilities_note_plain": (
        "{n} facilities, by id. Endpoint health details are shown to operators only."
    ),
    "problems_n": "{n} need attention",
    "no_facilities": "No facilities registered yet.",
    "col_id": "Id",
    "col_name": "Name",
    "col_level": "Level",
    "col_district": "District",
    "col_status": "Status",
    "col_imaging": "Imaging",
    "col_lab": "Lab",
    "col_reach": "Reachability",
    "col_latency": "Latency",
    "col_errors": "Errors (15 min)",
    "col_breaker": "Breaker",
    "status_live": "live",
    "status_pending": "pending",
    "status_disabled": "disabled",
    "none": "none",
    "reach_yes": "✓ reachable",
    "reach_no": "✗ unreachable",
    "reach_unknown": "– not probed",
    "breaker_closed": "closed",
    "breaker_open": "open",
    "breaker_half-open": "half-open",
    "lookups": "Look-ups per day",
    "lookups_total": "{n} in the period",
    "lookups_peak": "peak {day}: {n}",
    "lookups_chart": "Bar chart of look-ups per day: {days} days, {n} in all",
    "lookups_avg": "7-day average",
    "lookups_hint": "Hover over a bar for the day's count.",
    "no_lookups": "No look-ups in this period yet.",
    "heatmap": "Look-ups between facilities",
    "heatmap_note": (
        "Rows: requesting facility; columns: holding facility; by facility id. "
        "Colour on a log scale; blank means no look-ups."
    ),
    "heatmap_stats": "{pairs} pairs among {n} facilities; the busiest pair: {max}.",
    "heatmap_chart": "Heat map of look-ups between {n} facilities, {pairs} pairs",
    "heatmap_legend": "Look-ups (log scale)",
    "no_pairs": "No look-ups between facilities in this period yet.",
    "recognition": "Recognition of results",
    "recognition_note": (
        "Recognition rate = accepted ÷ (accepted + counted re-tests), over results within "
        "recognition; re-tests for reasons that do not count are left out."
    ),
    "by_holder": "By holding facility",
    "by_item": "By item",
    "reasons": "Re-tests by reason",
    "col_holder": "Holding facility",
    "col_item": "Item",
    "col_decisions": "Decisions",
    "col_accepted": "Accepted",
    "col_retests": "Counted re-tests",
    "col_rate": "Rate",
    "col_reason": "Reason",
    "col_count": "Count",
    "not_counted": "not counted",
    "not_counted_legend": (
        "Reasons marked “not counted” (such as a change in the patient's condition) "
        "do not lower the recognition rate."
    ),
    "no_recognition": "No recognition decisions in this period yet.",
    "no_reasons": "No re-tests in this period yet.",
    "checks": "Conformance checks",
    "checks_note": "Recent conformance checks that failed.",
    "col_facility": "Facility",
    "col_when": "When",
    "col_failed": "Failed probes",
    "col_report": "Report",
    "report": "Read the report",
    "no_checks": "✓ No failed conformance checks recently.",
    "qc": "Quality control ending",
    "qc_note": (
        "Facilities whose quality-control passes end within {days} days: results they produce "
        "afterwards lose the HR mark and are not recognised until the next passes are published."
    ),
    "col_kind": "Kind",
    "col_until": "Passes until",
    "col_days_left": "Days left",
    "col_facilities": "Facilities",
    "kind_lab": "Lab (EQA)",
    "kind_imaging": "Imaging QC",
    "facilities_n": "{n} facilities",
    "no_qc": "✓ No quality-control passes end within {days} days.",
    "stat_qc": "QC ending soon",
    "qc_first": "first {day}",
}

_TEXT: Final[dict[Lang, dict[str, str]]] = {"zh": _ZH, "en": _EN}

#: Buckets of the heat map's colour scale (classes b0..b7).
BUCKETS: Final = 8


def _t(lang: Lang, key: str, **values: object) -> str:
    return words(_TEXT, lang, key, **values)


def _attr(value: str) -> str:
    return escape(value, quote=True)


def _num(n: int) -> str:
    return f"{n:,}"


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f}%"


def _local_href(href: str, lang: Lang) -> str:
    """`href` if it stays on this site (no scheme, no host), kept in `lang`; "" otherwise."""
    try:
        parts = urlsplit(href)
    except ValueError:
        return ""
    if not href or parts.scheme or parts.netloc or href.startswith("//"):
        return ""
    if lang == "zh" or any(p.split("=", 1)[0] == "lang" for p in parts.query.split("&")):
        return href
    query = "&".join([p for p in parts.query.split("&") if p] + [f"lang={lang}"])
    return urlunsplit(("", "", parts.path, query, parts.fragment))


# --- Style ----------------------------------------------------------------------------------
# Never changes: its hash goes in the CSP. Compact on purpose (a console full of numbers),
# but no smaller than 12px; colours are never the only sign of anything.

_CSS: Final = """
:root{color-scheme:light}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:#eef1f5;color:#15181d;font:14px/1.45 "PingFang SC",
"Hiragino Sans GB","Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",system-ui,
sans-serif}
a{color:#0645ad}
:focus-visible{outline:3px solid #e6a100;outline-offset:2px}
.top{display:flex;flex-wrap:wrap;align-items:center;gap:.25rem 1.25rem;padding:.4rem 1rem;
background:#0b3d91;color:#fff}
.top h1{margin:0;font-size:1.2rem;line-height:1.4}
.top .when{color:#dbe5f7}
.top a.lang{margin-left:auto;color:#fff;font-weight:600;padding:.35rem .5rem}
main{max-width:1440px;margin:0 auto;padding:.5rem 1rem 2rem}
h2{font-size:1.1rem;margin:0 0 .4rem}
h3{font-size:.95rem;margin:.25rem 0 .35rem}
p{margin:.25rem 0}
.jump{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.25rem 0 .5rem}
.muted,.note{color:#4a5260}
.note{font-size:.85rem}
section{background:#fff;border:1px solid #cfd5de;border-radius:8px;padding:.75rem 1rem;
margin:.75rem 0}
.empty{color:#4a5260;font-style:italic}
.calm{color:#0a6b3b;font-weight:600;font-style:normal}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.5rem;
margin:.5rem 0}
.stat{background:#fff;border:1px solid #cfd5de;border-left:5px solid #0b3d91;border-radius:8px;
padding:.4rem .75rem;margin:0}
.stat dt{font-size:.85rem;color:#4a5260}
.stat dd{margin:0;font-size:1.6rem;font-weight:700;font-variant-numeric:tabular-nums;
line-height:1.25}
.stat .sub{display:block;font-size:.8rem;font-weight:400;color:#4a5260}
.stat.warn{border-left-color:#c62828}
.stat.warn .sub{color:#a50017;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.table-wrap{overflow:auto;max-height:75vh;border:1px solid #dde2e9}
table{width:100%;border-collapse:collapse;font-size:13px}
caption{text-align:left;padding:.25rem 0;color:#4a5260;font-size:.85rem}
th,td{padding:2px 6px;border-bottom:1px solid #e3e7ed;text-align:left;vertical-align:middle}
thead th{position:sticky;top:0;z-index:1;background:#e6ebf2;color:#1d232b;font-size:12px;
white-space:nowrap}
th.num{text-align:right}
tbody tr:hover{background:#f3f7ff}
#facility-table td,#facility-table th{white-space:nowrap}
#facility-table td.name{white-space:normal;min-width:10rem}
tr.problem{background:#fdecee}
tr.problem:hover{background:#fbdde1}
.badge{display:inline-block;padding:0 .4rem;border-radius:4px;font-size:12px;
border:1px solid currentColor}
.status-live{color:#0a6b3b}
.status-pending{color:#8a5300}
.status-disabled{color:#5a6270}
.none{color:#6b7380}
.dot{display:inline-block;width:.65em;height:.65em;margin-right:.3em;border-radius:50%;
background:#8a94a3;vertical-align:baseline}
.reach-yes .dot{background:#1a7f37}
.reach-no .dot{background:#c62828}
.reach-no{color:#a50017;font-weight:700}
.reach-unknown{color:#5a6270}
.breaker-open{color:#c62828;font-weight:700}
.breaker-half-open{color:#8a5300;font-weight:600}
.errors-high{color:#a50017;font-weight:700}
.chart{display:block;width:100%;height:auto}
#lookups-chart{max-height:300px}
.axis text,.labels text{font-size:11px;fill:#3d4450}
.axis line,.grid line{stroke:#d5dae1;stroke-width:1}
.axis .base{stroke:#6b7380}
.day .hit{fill:transparent}
.day .bar{fill:#3b6fc4}
.day:hover .bar{fill:#0b3d91}
.day:hover .hit{fill:#0b3d9114}
.avg{fill:none;stroke:#c65d00;stroke-width:2}
.key{display:inline-flex;align-items:center;gap:.3rem;margin-right:1rem;font-size:.85rem}
.key i{display:inline-block;width:1.2rem;height:.7rem;border-radius:2px}
.key i.k-bar{background:#3b6fc4}
.key i.k-avg{height:2px;background:#c65d00}
.heat{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.heat-plot{flex:0 1 auto;max-width:100%;overflow:auto}
#heatmap{display:block;max-width:100%;height:auto}
#heatmap .plot{fill:#fff;stroke:#b9c1cc}
#heatmap .labels text{font-size:10px}
#heatmap .cell:hover{stroke:#000;stroke-width:1}
.heat-side{flex:1 1 14rem;min-width:14rem}
.legend{list-style:none;margin:.3rem 0;padding:0}
.legend li{display:flex;align-items:center;gap:.4rem;font-size:.85rem;
font-variant-numeric:tabular-nums}
.legend .sw{display:inline-block;width:1.4rem;height:.9rem;border:1px solid #b9c1cc}
.b0{fill:#edf8b1;background:#edf8b1}
.b1{fill:#c7e9b4;background:#c7e9b4}
.b2{fill:#7fcdbb;background:#7fcdbb}
.b3{fill:#41b6c4;background:#41b6c4}
.b4{fill:#1d91c0;background:#1d91c0}
.b5{fill:#225ea8;background:#225ea8}
.b6{fill:#253494;background:#253494}
.b7{fill:#081d58;background:#081d58}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(34rem,1fr));gap:.5rem 1.25rem}
.cols .table-wrap{max-height:24rem}
.part{min-width:0}
.rbar{display:block;width:100%;min-width:6rem;height:10px}
.rbar .track{fill:#e3e7ed}
.rbar .fill{fill:#1a7f37}
.rbar .fill.low{fill:#c62828}
.rbar .fill.mid{fill:#b06000}
.rbar .fill.neutral{fill:#8a94a3}
.rbar .fill.against{fill:#b06000}
td.bar-cell{width:28%}
td.subject{min-width:12rem}
td.when{white-space:nowrap;font-variant-numeric:tabular-nums}
tr.not-counted td{color:#4a5260}
.tag{display:inline-block;margin-left:.4rem;padding:0 .35rem;border-radius:4px;
background:#e6ebf2;color:#3d4450;font-size:11px}
.probe{display:inline-block;margin:0 .25rem .1rem 0;padding:0 .35rem;border-radius:4px;
background:#fdecee;color:#a50017;font-size:12px}
@media (max-width:900px){.top a.lang{margin-left:0}}
"""


# Allows exactly the inline style above: no script, no image, no form, no frame.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src {csp_hash(_CSS)}; script-src 'none'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# --- The header -----------------------------------------------------------------------------


def _stat(sid: str, label: str, value: str, sub: str = "", warn: bool = False) -> str:
    css = "stat warn" if warn else "stat"
    sub_html = f'<span class="sub">{sub}</span>' if sub else ""
    return f'<dl class="{css}"><dt>{label}</dt><dd id="{sid}">{value}{sub_html}</dd></dl>\n'


def overall_rate(rows: Iterable[RecognitionRow]) -> tuple[float | None, int]:
    """(recognition rate, decisions) over `rows`: accepted ÷ (accepted + counted re-tests)."""
    accepted = counted = decisions = 0
    for r in rows:
        accepted += r.accepted
        counted += r.retests_counted
        decisions += r.decisions
    return (accepted / (accepted + counted) if accepted + counted else None), decisions


def _headline(lang: Lang, view: ConsoleView) -> str:
    status = {"live": 0, "pending": 0, "disabled": 0}
    reachable = unreachable = unprobed = 0
    for f in view.facilities:
        if f.status in status:
            status[f.status] += 1
        if f.reachable is None:
            unprobed += 1
        elif f.reachable:
            reachable += 1
        else:
            unreachable += 1
    probed = reachable + unreachable
    reach_sub = [_t(lang, "of_probed", n=probed)]
    if unreachable:
        reach_sub.append(_t(lang, "unreachable_n", n=unreachable))
    if unprobed:
        reach_sub.append(_t(lang, "not_probed_n", n=unprobed))
    days = len(view.lookups_by_day)
    per_day = _t(lang, "per_day", n=_num(round(view.lookups_total / days))) if days else ""
    # By holder covers every recognised decision (by item only those with an item).
    rate, decisions = overall_rate(view.recognition_by_holder or view.recognition_by_item)
    rate_sub = _t(lang, "decisions_n", n=_num(decisions)) if decisions else _t(lang, "no_decisions")
    return (
        f'<div class="stats" id="headline" role="group" aria-label="{_t(lang, "headline")}">\n'
        + _stat("stat-live", _t(lang, "stat_live"), _num(status["live"]))
        + _stat("stat-pending", _t(lang, "stat_pending"), _num(status["pending"]))
        + _stat("stat-disabled", _t(lang, "stat_disabled"), _num(status["disabled"]))
        + _stat(
            "stat-reachable",
            _t(lang, "stat_reachable"),
            _num(reachable),
            " · ".join(reach_sub),
            warn=unreachable > 0,
        )
        + _stat("stat-lookups", _t(lang, "stat_lookups"), _num(view.lookups_total), per_day)
        + _stat("stat-recognition", _t(lang, "stat_recognition"), _pct(rate), rate_sub)
        + _qc_stat(lang, view)
        + "</div>\n"
    )


# --- Facilities -----------------------------------------------------------------------------


def is_problem(f: FacilityRow) -> bool:
    """Needs attention: unreachable, or its circuit breaker open."""
    return f.reachable is False or f.breaker == "open"


def _known(lang: Lang, prefix: str, value: str) -> str:
    """The word for `value` when there is one, else the value itself (escaped)."""
    key = f"{prefix}{value}"
    return _t(lang, key) if key in _TEXT[lang] else escape(value)


def _interface(lang: Lang, value: str) -> str:
    if not value or value.lower() == "none":
        return f'<span class="none">{_t(lang, "none")}</span>'
    return escape(value)


def _facility_row(lang: Lang, f: FacilityRow, details: bool, problem: bool) -> str:
    status = (
        f'<span class="badge status-{_attr(f.status)}">{_known(lang, "status_", f.status)}</span>'
    )
    cells = [
        f'<tr class="facility{" problem" if problem else ""}" data-id="{_attr(f.id)}" '
        f'data-status="{_attr(f.status)}">',
        f'<td class="id">{escape(f.id)}</td><td class="name">{escape(f.name)}</td>',
        f"<td>{escape(f.level)}</td><td>{escape(f.district)}</td><td>{status}</td>",
        f"<td>{_interface(lang, f.imaging)}</td><td>{_interface(lang, f.lab)}</td>",
    ]
    if details:
        if f.reachable is None:
            reach = "reach-unknown", _t(lang, "reach_unknown")
        elif f.reachable:
            reach = "reach-yes", _t(lang, "reach_yes")
        else:
            reach = "reach-no", _t(lang, "reach_no")
        latency = (
            "–"
            if f.latency_ms is None
            else f"{f.latency_ms:.1f} ms"
            if f.latency_ms < 10
            else f"{f.latency_ms:,.0f} ms"
        )
        errors_css = (
            ' class="num errors-high"'
            if f.error_rate is not None and f.error_rate >= 0.05
            else ' class="num"'
        )
        breaker = _known(lang, "breaker_", f.breaker)
        cells.append(
            f'<td class="reach {reach[0]}"><span class="dot" aria-hidden="true"></span>'
            f"{reach[1]}</td>"
            f'<td class="num">{latency}</td><td{errors_css}>{_pct(f.error_rate)}</td>'
            f'<td class="breaker breaker-{_attr(f.breaker)}">{breaker}</td>'
        )
    cells.append("</tr>\n")
    return "".join(cells)


def _facilities(lang: Lang, view: ConsoleView) -> str:
    details = view.show_facility_details
    n = len(view.facilities)
    head = f'<section id="facilities">\n<h2>{_t(lang, "facilities")}</h2>\n'
    if not n:
        return head + f'<p class="empty">{_t(lang, "no_facilities")}</p>\n</section>\n'
    if details:
        marked = sorted(((is_problem(f), f) for f in view.facilities), key=_problem_first)
        problems = sum(1 for p, _ in marked if p)
        note = _t(lang, "facilities_note", n=n)
        if problems:
            note += f' <strong class="reach-no">{_t(lang, "problems_n", n=problems)}</strong>'
    else:
        marked = [(False, f) for f in sorted(view.facilities, key=lambda f: f.id)]
        note = _t(lang, "facilities_note_plain", n=n)
    columns = ["col_id", "col_name", "col_level", "col_district", "col_status", "col_imaging"]
    columns.append("col_lab")
    if details:
        columns += ["col_reach", "col_latency", "col_errors", "col_breaker"]
    numeric = {"col_latency", "col_errors"}
    th = "".join(
        f'<th scope="col" class="num">{_t(lang, c)}</th>'
        if c in numeric
        else f'<th scope="col">{_t(lang, c)}</th>'
        for c in columns
    )
    rows = "".join(_facility_row(lang, f, details, p) for p, f in marked)
    return (
        head
        + f'<p class="note">{note}</p>\n'
        + '<div class="table-wrap"><table id="facility-table">\n'
        + f"<thead><tr>{th}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table></div>\n</section>\n"
    )


def _problem_first(marked: tuple[bool, FacilityRow]) -> tuple[bool, str]:
    return (not marked[0], marked[1].id)


# --- Look-ups per day -----------------------------------------------------------------------


def _nice_step(top: float, ticks: int = 5) -> int:
    """A round step (1, 2, 5 × 10^k) giving about `ticks` intervals up to `top`."""
    raw = max(top / ticks, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return int(m * power)
    return int(10 * power)  # pragma: no cover


def _date_ticks(days: list[str]) -> list[tuple[int, str]]:
    """(index, label) of a few days to name on the x axis."""
    n = len(days)
    if n > 62:
        firsts = [(i, d[:7]) for i, d in enumerate(days) if d[8:10] == "01"]
        if len(firsts) >= 2:
            step = math.ceil(len(firsts) / 13)
            return firsts[::step]
    step = max(1, math.ceil(n / 7))
    return [(i, days[i][5:] if len(days[i]) == 10 else days[i]) for i in range(0, n, step)]


def _lookups(lang: Lang, view: ConsoleView) -> str:
    days = view.lookups_by_day
    head = (
        f'<section id="lookups">\n<h2>{_t(lang, "lookups")}</h2>\n'
        f'<p><strong id="lookups-total">{_t(lang, "lookups_total", n=_num(view.lookups_total))}'
        "</strong>"
    )
    top = max((d.count for d in days), default=0)
    if top <= 0:
        return head + f'</p>\n<p class="empty">{_t(lang, "no_lookups")}</p>\n</section>\n'
    peak = next(d for d in days if d.count == top)
    head += f" · {_t(lang, 'lookups_peak', day=peak.day, n=_num(top))}</p>\n"

    width, height = 1200, 280
    left, right, top_m, bottom = 64, 12, 12, 30
    pw, ph = width - left - right, height - top_m - bottom
    n = len(days)
    step = _nice_step(top)
    ymax = math.ceil(top / step) * step
    slot = pw / n
    bar_w = slot * 0.8 if slot >= 4 else slot
    pad = (slot - bar_w) / 2
    scale = ph / ymax
    base_y = top_m + ph
    out = [
        f'<svg id="lookups-chart" class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_t(lang, "lookups_chart", days=n, n=_num(view.lookups_total))}">\n'
        '<g class="axis">'
    ]
    for v in range(0, ymax + 1, step):
        y = round(base_y - v * scale, 1)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y}" y2="{y}"/>'
            f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v:,}</text>'
        )
    labels = [d.day for d in days]
    for i, label in _date_ticks(labels):
        x = round(left + i * slot + slot / 2, 1)
        out.append(
            f'<line class="base" x1="{x}" x2="{x}" y1="{base_y}" y2="{base_y + 5}"/>'
            f'<text x="{x}" y="{base_y + 18}" text-anchor="middle">{escape(label)}</text>'
        )
    out.append(
        f'<line class="base" x1="{left}" x2="{width - right}" y1="{base_y}" y2="{base_y}"/>'
        "</g>\n<g>\n"
    )
    for i, d in enumerate(days):
        x = left + i * slot
        h = max(d.count, 0) * scale
        out.append(
            f'<g class="day"><title>{escape(d.day)}: {d.count:,}</title>'
            f'<rect class="hit" x="{x:.1f}" y="{top_m}" width="{slot:.1f}" height="{ph}"/>'
            f'<rect class="bar" x="{x + pad:.1f}" y="{base_y - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}"/></g>\n'
        )
    out.append("</g>\n")
    legend = ""
    if n >= 14:
        # A 7-day moving average: a year of daily bars is noisy, the trend is what is read.
        window = 0
        points = []
        for i, d in enumerate(days):
            window += d.count
            if i >= 7:
                window -= days[i - 7].count
            if i >= 6:
                x = left + i * slot + slot / 2
                points.append(f"{x:.1f},{base_y - window / 7 * scale:.1f}")
        out.append(f'<polyline class="avg" points="{" ".join(points)}"/>\n')
        legend = (
            f'<p class="note"><span class="key"><i class="k-bar"></i>{_t(lang, "lookups")}</span>'
            f'<span class="key"><i class="k-avg"></i>{_t(lang, "lookups_avg")}</span>'
            f"{_t(lang, 'lookups_hint')}</p>\n"
        )
    out.append("</svg>\n")
    return head + "".join(out) + legend + "</section>\n"


# --- The heat map ---------------------------------------------------------------------------


def log_scale(top: int) -> float:
    """The scale of the heat map's colours: a count c (1..top) falls in bucket
    min(int(log(c) * scale), 7), so each bucket spans an equal ratio of counts; 0.0 when
    every count is 1 (all in the top bucket)."""
    return BUCKETS / math.log(top) if top > 1 else 0.0


def _bucket(c: int, scale: float) -> int:
    if scale == 0.0:
        return BUCKETS - 1
    b = int(math.log(c) * scale)
    return b if b < BUCKETS else BUCKETS - 1


def _legend_ranges(top: int, scale: float) -> list[tuple[int, int, int]]:
    """(bucket, lowest, highest count) of each non-empty bucket of the scale."""
    if scale == 0.0:
        return [(BUCKETS - 1, 1, top)]
    lows = [1]
    for k in range(1, BUCKETS):
        lo = max(lows[-1], math.ceil(math.exp(k / scale) - 1e-9))
        while lo <= top and _bucket(lo, scale) < k:
            lo += 1
        while lo > lows[-1] and _bucket(lo - 1, scale) >= k:
            lo -= 1
        lows.append(lo)
    highs = [lows[k + 1] - 1 for k in range(BUCKETS - 1)] + [top]
    return [(k, lows[k], highs[k]) for k in range(BUCKETS) if lows[k] <= highs[k]]


def _heatmap(lang: Lang, view: ConsoleView) -> str:
    head = f'<section id="heatmap-section">\n<h2>{_t(lang, "heatmap")}</h2>\n'
    # Summed, should a pair come twice; pairs without look-ups are not drawn.
    counts: dict[tuple[str, str], int] = {}
    for p in view.pairs:
        if p.count > 0:
            key = (p.requester, p.holder)
            counts[key] = counts.get(key, 0) + p.count
    if not counts:
        return head + f'<p class="empty">{_t(lang, "no_pairs")}</p>\n</section>\n'
    ids = sorted({r for r, _ in counts} | {h for _, h in counts})
    n = len(ids)
    pos = {fid: i for i, fid in enumerate(ids)}
    cell = max(4, min(24, 720 // n))
    shown = [fid if len(fid) <= 14 else fid[:13] + "…" for fid in ids]
    margin = 10 + 6 * max(len(s) for s in shown)
    size = margin + n * cell + 4
    every = math.ceil(12 / cell)  # a label every `every` facilities: at least 12px apart
    top = max(counts.values())
    scale = log_scale(top)
    names = [escape(fid) for fid in ids]

    out = [
        f'<svg id="heatmap" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="{_t(lang, "heatmap_chart", n=n, pairs=_num(len(counts)))}">\n'
        f'<rect class="plot" x="{margin}" y="{margin}" width="{n * cell}" height="{n * cell}"/>\n'
        '<g class="grid">'
    ]
    end = margin + n * cell
    for i in range(10, n, 10):
        at = margin + i * cell
        out.append(
            f'<line x1="{margin}" x2="{end}" y1="{at}" y2="{at}"/>'
            f'<line x1="{at}" x2="{at}" y1="{margin}" y2="{end}"/>'
        )
    out.append('</g>\n<g class="labels">')
    half = cell // 2 + 4
    for i in range(0, n, every):
        at = margin + i * cell + half
        label = escape(shown[i])
        out.append(
            f'<text x="{margin - 4}" y="{at}" text-anchor="end">{label}</text>'
            f'<text transform="translate({at - 1},{margin - 4}) rotate(-90)">{label}</text>'
        )
    out.append(f'</g>\n<g transform="translate({margin},{margin})">\n')

    rows: list[list[tuple[int, int]]] = [[] for _ in ids]
    for (requester, holder), c in counts.items():
        rows[pos[requester]].append((pos[holder], c))
    xs = [str(i * cell) for i in range(n)]
    size_attrs = f'" width="{cell}" height="{cell}"><title>'
    tails = [f"{name}: " for name in names]
    classes = [f'<rect class="cell b{k}" x="' for k in range(BUCKETS)]
    log = math.log
    last = BUCKETS - 1
    for y, row in enumerate(rows):
        if not row:
            continue
        row.sort()
        out.append(f'<g transform="translate(0,{y * cell})">')
        lead = f"{names[y]} → "
        for h, c in row:
            b = last if scale == 0.0 else int(log(c) * scale)
            out.append(
                f"{classes[b if b < last else last]}{xs[h]}{size_attrs}{lead}{tails[h]}{c:,}"
                "</title></rect>"
            )
        out.append("</g>\n")
    out.append("</g>\n</svg>\n")

    legend = "".join(
        f'<li><span class="sw b{k}" aria-hidden="true"></span>'
        f"{_num(lo) if lo == hi else f'{_num(lo)}–{_num(hi)}'}</li>"
        for k, lo, hi in _legend_ranges(top, scale)
    )
    side = (
        '<div class="heat-side">\n'
        f'<p class="note">{_t(lang, "heatmap_note")}</p>\n'
        f"<p>{_t(lang, 'heatmap_stats', n=n, pairs=_num(len(counts)), max=_num(top))}</p>\n"
        f"<h3>{_t(lang, 'heatmap_legend')}</h3>\n"
        f'<ul class="legend" id="heatmap-legend">{legend}</ul>\n'
        "</div>\n"
    )
    return (
        head
        + '<div class="heat"><div class="heat-plot">'
        + "".join(out)
        + "</div>\n"
        + side
        + ("</div>\n</section>\n")
    )


# --- Recognition ----------------------------------------------------------------------------


_BAR: Final = (
    '<svg class="rbar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
    '<rect class="track" width="100" height="10"/>'
)


def _bar(css: str, share: float) -> str:
    """A horizontal bar filled to `share` (0..1) of its width, as a tiny SVG (a style
    attribute would be blocked by the CSP)."""
    w = round(max(0.0, min(share, 1.0)) * 100, 1)
    return f'{_BAR}<rect class="{css}" width="{w}" height="10"/></svg>'


def _rate_bar(rate: float | None) -> str:
    if rate is None:
        return _BAR + "</svg>"
    return _bar("fill" if rate >= 0.9 else "fill mid" if rate >= 0.7 else "fill low", rate)


def _table(lang: Lang, tid: str, columns: Iterable[str], rows: Iterable[str]) -> str:
    """A scrollable table: a header cell per column key ("" for a blank one; "#key" for a
    numeric, right-aligned one) and the rows as given."""
    heads = []
    for key in columns:
        if not key:
            heads.append('<th scope="col"></th>')
        elif key.startswith("#"):
            heads.append(f'<th scope="col" class="num">{_t(lang, key[1:])}</th>')
        else:
            heads.append(f'<th scope="col">{_t(lang, key)}</th>')
    return (
        f'<div class="table-wrap"><table id="{tid}">\n<thead><tr>{"".join(heads)}</tr></thead>\n'
        f"<tbody>\n{''.join(rows)}</tbody>\n</table></div>\n"
    )


def _recognition_table(
    lang: Lang, tid: str, title: str, key_col: str, rows: tuple[RecognitionRow, ...]
) -> str:
    head = f'<div class="part">\n<h3>{_t(lang, title)}</h3>\n'
    if not rows:
        return head + f'<p class="empty">{_t(lang, "no_recognition")}</p>\n</div>\n'
    columns = (key_col, "#col_decisions", "#col_accepted", "#col_retests", "#col_rate", "")
    body = (
        f'<tr class="rec" data-key="{_attr(r.key)}"><td class="subject">'
        f'<span class="muted">{escape(r.key)}</span> '
        f"{escape(r.label)}</td>"
        f'<td class="num">{_num(r.decisions)}</td><td class="num">{_num(r.accepted)}</td>'
        f'<td class="num">{_num(r.retests_counted)}</td><td class="num rate">{_pct(r.rate)}</td>'
        f'<td class="bar-cell">{_rate_bar(r.rate)}</td></tr>\n'
        for r in rows
    )
    return head + _table(lang, tid, columns, body) + "</div>\n"


def _reasons(lang: Lang, reasons: tuple[ReasonCount, ...]) -> str:
    head = f'<div class="part">\n<h3>{_t(lang, "reasons")}</h3>\n'
    if not reasons:
        return head + f'<p class="empty">{_t(lang, "no_reasons")}</p>\n</div>\n'
    ordered = sorted(reasons, key=lambda r: (-r.count, r.code))
    top = max(max(r.count for r in ordered), 1)
    rows = []
    for r in ordered:
        css = "fill against" if r.counts_against else "fill neutral"
        tag = "" if r.counts_against else f'<span class="tag">{_t(lang, "not_counted")}</span>'
        rows.append(
            f'<tr class="reason{"" if r.counts_against else " not-counted"}" '
            f'data-code="{_attr(r.code)}"><td class="subject">'
            f'<span class="muted">{escape(r.code)}</span> '
            f"{escape(r.label)}{tag}</td>"
            f'<td class="num">{_num(r.count)}</td>'
            f'<td class="bar-cell">{_bar(css, max(r.count, 0) / top)}</td></tr>\n'
        )
    legend = (
        f'<p class="note">{_t(lang, "not_counted_legend")}</p>\n'
        if any(not r.counts_against for r in ordered)
        else ""
    )
    table = _table(lang, "retest-reasons", ("col_reason", "#col_count", ""), rows)
    return head + table + legend + "</div>\n"


def _recognition(lang: Lang, view: ConsoleView) -> str:
    return (
        f'<section id="recognition">\n<h2>{_t(lang, "recognition")}</h2>\n'
        f'<p class="note">{_t(lang, "recognition_note")}</p>\n<div class="cols">\n'
        + _recognition_table(
            lang, "recognition-by-holder", "by_holder", "col_holder", view.recognition_by_holder
        )
        + _recognition_table(
            lang, "recognition-by-item", "by_item", "col_item", view.recognition_by_item
        )
        + _reasons(lang, view.retest_reasons)
        + "</div>\n"
        + _qc_lapsing(lang, view)
        + "</section>\n"
    )


def _qc_stat(lang: Lang, view: ConsoleView) -> str:
    facilities = {fid for g in view.qc_lapsing for fid, _ in g.facilities}
    first = _t(lang, "qc_first", day=view.qc_lapsing[0].covered_until) if facilities else ""
    return _stat(
        "stat-qc", _t(lang, "stat_qc"), _num(len(facilities)), first, warn=bool(facilities)
    )


def _qc_lapsing(lang: Lang, view: ConsoleView) -> str:
    """Quality-control passes about to end, by day and kind: the catalogue is published a year
    at a time, and an unnoticed end silently takes the HR mark off a facility's results."""
    head = (
        f'<div id="qc-lapsing">\n<h3>{_t(lang, "qc")}</h3>\n'
        f'<p class="note">{_t(lang, "qc_note", days=view.qc_warning_days)}</p>\n'
    )
    if not view.qc_lapsing:
        calm = (
            f'<p class="empty calm" id="qc-none">{_t(lang, "no_qc", days=view.qc_warning_days)}</p>'
        )
        return head + calm + "\n</div>\n"
    rows = []
    for g in view.qc_lapsing:
        names = "".join(
            f'<span class="probe" title="{_attr(name)}">{escape(fid)}</span>'
            for fid, name in g.facilities
        )
        rows.append(
            f'<tr class="qc-lapse" data-kind="{_attr(g.kind)}">'
            f"<td>{_t(lang, 'kind_' + g.kind)}</td>"
            f'<td class="when">{escape(g.covered_until)}</td><td class="num">{g.days_left}</td>'
            f"<td><details><summary>{_t(lang, 'facilities_n', n=len(g.facilities))}</summary>"
            f"{names}</details></td></tr>\n"
        )
    columns = ("col_kind", "col_until", "#col_days_left", "col_facilities")
    return head + _table(lang, "qc-table", columns, rows) + "</div>\n"


# --- Conformance checks ---------------------------------------------------------------------


def _checks(lang: Lang, view: ConsoleView) -> str:
    head = (
        f'<section id="checks">\n<h2>{_t(lang, "checks")}</h2>\n'
        f'<p class="note">{_t(lang, "checks_note")}</p>\n'
    )
    if not view.failed_checks:
        calm = f'<p class="empty calm" id="checks-none">{_t(lang, "no_checks")}</p>\n'
        return head + calm + "</section>\n"
    names = {f.id: f.name for f in view.facilities}
    rows = []
    for c in view.failed_checks:
        name = names.get(c.facility, "")
        who = escape(c.facility) + (f' <span class="muted">{escape(name)}</span>' if name else "")
        probes = "".join(f'<span class="probe">{escape(p)}</span>' for p in c.failed)
        href = _local_href(c.href, lang)
        link = f'<a class="report" href="{_attr(href)}">{_t(lang, "report")}</a>' if href else "–"
        rows.append(
            f'<tr class="check" data-facility="{_attr(c.facility)}"><td>{who}</td>'
            f'<td class="when">{escape(c.when)}</td><td>{probes}</td><td>{link}</td></tr>\n'
        )
    columns = ("col_facility", "col_when", "col_failed", "col_report")
    return head + _table(lang, "checks-table", columns, rows) + "</section>\n"


# --- The page -------------------------------------------------------------------------------

_SECTIONS: Final = (
    ("facilities", "facilities"),
    ("lookups", "lookups"),
    ("heatmap-section", "heatmap"),
    ("recognition", "recognition"),
    ("checks", "checks"),
)


def console_page(lang: Lang, view: ConsoleView) -> str:
    """The console: headline numbers, facilities and their endpoints, look-ups per day and
    between facilities, recognition, failed conformance checks."""
    other = OTHER_LANG[lang]
    title = _t(lang, "console")
    jump = "".join(f'<a href="#{sid}">{_t(lang, key)}</a>' for sid, key in _SECTIONS)
    header = (
        '<header class="top">\n'
        f"<h1>{title}</h1>\n"
        f'<span class="when" id="period">{_t(lang, "period", period=view.period)}</span>\n'
        f'<span class="when" id="generated">{_t(lang, "generated", when=view.generated)}</span>\n'
        f'<a class="lang" href="?lang={other}" hreflang="{HTML_LANG[other]}" '
        f'lang="{HTML_LANG[other]}">{_t(lang, "switch")}</a>\n'
        "</header>\n"
    )
    body = (
        header
        + '<main id="console">\n'
        + _headline(lang, view)
        + f'<nav class="jump" aria-label="{_t(lang, "jump")}">{jump}</nav>\n'
        + _facilities(lang, view)
        + _lookups(lang, view)
        + _heatmap(lang, view)
        + _recognition(lang, view)
        + _checks(lang, view)
        + "</main>\n"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{HTML_LANG[lang]}">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        '<meta name="format-detection" content="telephone=no">\n'
        f"<title>{title}</title>\n"
        f"<style>{_CSS}</style>\n"
        "</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )
