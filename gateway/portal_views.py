"""The resident portal (云胶片, cloud film): its pages as server-rendered HTML5 strings.

Pure functions from frozen view data to `str`; the aiohttp handlers that call them live
elsewhere. Built for a phone on a slow connection, opened by people of every age: big text,
big touch targets, high contrast, and nothing fetched from the internet. Each page carries its
own CSS and (the viewer only) a little vanilla JavaScript inline; the one external thing a
page asks for is the study's images, from the gateway itself.

Every value that came from upstream (names, descriptions, report texts, URLs) goes through
`html.escape`; the viewer's series data is embedded as JSON with every ``<`` written as
``\\u003c``, so no value can end the script element. All text a resident reads comes from one
dictionary per language (`_TEXT`); Chinese is the default, ``?lang=en`` switches.

The inline style and script never change, so `CONTENT_SECURITY_POLICY` allows exactly them by
hash: a handler can send it as the ``Content-Security-Policy`` header of every portal page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from .page_text import HTML_LANG, OTHER_LANG, csp_hash, words
from .page_text import Lang as Lang  # re-exported: the pages' callers name it from here

Flag = Literal["H", "L", "N", ""]
UnlockKind = Literal["id4", "pin"]
ErrorKind = Literal["forged", "expired", "revoked", "locked", "not-found", "error"]


@dataclass(frozen=True, slots=True)
class LabRow:
    """One lab result; flag H high, L low, N normal, "" unknown."""

    name: str
    value: str
    unit: str
    range_text: str
    flag: Flag


@dataclass(frozen=True, slots=True)
class LabPanel:
    """A lab report (one panel of results); `when` like "2026-11-20 08:30"."""

    facility: str
    when: str
    title: str
    hr_mark: bool
    rows: tuple[LabRow, ...]


@dataclass(frozen=True, slots=True)
class ReportItem:
    """A diagnostic report: its conclusion shown, its full text behind <details>."""

    facility: str
    when: str
    title: str
    conclusion: str
    text: str


@dataclass(frozen=True, slots=True)
class StudyItem:
    """An imaging study as a card of the list page."""

    facility: str
    when: str
    modality: str
    description: str
    series: int
    images: int
    hr_mark: bool
    view_href: str
    download_href: str


@dataclass(frozen=True, slots=True)
class ShareView:
    """What one share link shows; `patient` is already masked ("张*明"), lists newest first."""

    patient: str
    expires: str
    base: str
    studies: tuple[StudyItem, ...]
    reports: tuple[ReportItem, ...]
    labs: tuple[LabPanel, ...]
    access_log_href: str


@dataclass(frozen=True, slots=True)
class SeriesView:
    """A series in the viewer: URLs of its rendered JPEGs in order, without a window parameter
    (the page appends ``window=center,width``, after ``&`` when the URL already has a ``?``)."""

    uid: str
    description: str
    modality: str
    images: tuple[str, ...]
    default_preset: str


@dataclass(frozen=True, slots=True)
class StudyView:
    """A study opened in the viewer."""

    facility: str
    when: str
    description: str
    series: tuple[SeriesView, ...]
    download_href: str
    back_href: str


@dataclass(frozen=True, slots=True)
class AccessRow:
    """One look at the resident's records: facility and role only, no staff personal details."""

    when: str
    facility: str
    role: str
    what: str


# Display windows (center, width) in Hounsfield units.
PRESETS: Final = {"soft": (40, 400), "lung": (-600, 1500), "bone": (400, 1800), "brain": (40, 80)}
DEFAULT_PRESET: Final = "soft"
#: A series' own window (MR, ultrasound, radiographs: HU presets mean nothing there); the
#: presets stay offered.
OWN_WINDOW: Final = "own"

# --- The words ------------------------------------------------------------------------------
# Plain text only (escaped on use); {name} fields are filled with escaped values.

_ZH: Final[dict[str, str]] = {
    "portal": "云胶片",
    "switch": "English",
    "records_of": "{name} 的检查记录",
    "expires": "链接有效期至 {when}",
    "private": "此链接可以查看您的医疗记录，请勿转发给他人。",
    "studies": "影像检查",
    "reports": "检查报告",
    "labs": "检验结果",
    "jump": "跳转到",
    "view": "查看影像",
    "download": "下载DICOM",
    "download_hint": "DICOM 是给医生用的原始文件，体积较大；在手机上看片请点“查看影像”。",
    "counts": "{series} 个序列 · {images} 张图像",
    "hr_title": "互认：本市医疗机构互认的结果",
    "hr_sr": "互认",
    "hr_legend": "HR 标记表示本市医疗机构互认的结果，到其他医院就诊时一般无需重复检查。",
    "no_studies": "暂无影像检查。",
    "no_reports": "暂无检查报告。",
    "no_labs": "暂无检验结果。",
    "conclusion": "结论：",
    "full_text": "查看报告全文",
    "col_item": "项目",
    "col_result": "结果",
    "col_unit": "单位",
    "col_range": "参考范围",
    "col_flag": "提示",
    "flag_H": "↑ 偏高",
    "flag_L": "↓ 偏低",
    "lab_legend": "↑ 高于参考范围，↓ 低于参考范围。结果的意义请咨询医生。",
    "access_log": "谁查看过我的记录",
    "unlock_title": "验证身份",
    "unlock_intro": "为保护您的隐私，查看记录前请先完成验证。",
    "id4_label": "身份证号后四位",
    "id4_hint": "请输入身份证号码的最后 4 位；最后一位是 X 的，请输入 X。",
    "id4_pattern": "4 位：数字，最后一位可以是 X",
    "pin_label": "报告单上的 6 位验证码",
    "pin_hint": "验证码印在您的检查报告单上，共 6 位数字。",
    "pin_pattern": "6 位数字",
    "submit": "确认",
    "wrong": "输入不正确，请重新输入。",
    "attempts_one": "还可以尝试 {n} 次。",
    "attempts_many": "还可以尝试 {n} 次。",
    "attempts_none": "已没有剩余的尝试次数。",
    "unlock_help": "无法验证时，请联系就诊医院重新获取查看码。",
    "err_forged_title": "链接无效",
    "err_forged_what": "无法识别这个链接，它可能复制得不完整，或被改动过。",
    "err_forged_do": "请核对链接是否完整；仍然打不开时，请联系就诊医院重新获取查看码。",
    "err_expired_title": "链接已过期",
    "err_expired_what": "为保护您的隐私，查看链接只在一段时间内有效，这个链接已经过期。",
    "err_expired_do": "请联系就诊医院重新获取查看码。",
    "err_revoked_title": "链接已停用",
    "err_revoked_what": "这个链接已被停用（由您本人或医院申请）。",
    "err_revoked_do": "如需继续查看，请联系就诊医院重新获取查看码。",
    "err_locked_title": "链接已锁定",
    "err_locked_what": "验证失败的次数太多，为保护您的隐私，这个链接已被锁定。",
    "err_locked_do": "请联系就诊医院重新获取查看码。",
    "err_not-found_title": "找不到内容",
    "err_not-found_what": "没有找到您要查看的内容，它可能已被移除。",
    "err_not-found_do": "请返回上一页；仍然找不到时，请联系就诊医院。",
    "err_error_title": "系统暂时出错",
    "err_error_what": "服务暂时无法使用，这不是您的操作问题。",
    "err_error_do": "请稍后再试；一直打不开时，请联系就诊医院重新获取查看码。",
    "reassure": "您的检查记录仍完好地保存在医院，不会因此丢失。",
    "retry": "重新加载",
    "back_list": "返回检查列表",
    "image_alt": "医学影像：{what}",
    "prev": "上一张",
    "next": "下一张",
    "slider": "图像位置",
    "series": "序列",
    "series_option": "{n}. {what}（{count} 张）",
    "window": "窗口",
    "preset_soft": "软组织",
    "preset_lung": "肺窗",
    "preset_bone": "骨窗",
    "preset_brain": "脑窗",
    "zoom": "缩放",
    "zoom_in": "放大",
    "zoom_out": "缩小",
    "zoom_reset": "还原",
    "gestures": "左右滑动翻页，双指缩放；放大后可拖动查看。",
    "noscript": "翻页和缩放需要浏览器开启 JavaScript。",
    "no_images": "这项检查暂无可显示的图像。",
    "loading": "加载中…",
    "failed": "这张图像没有加载成功，请稍后重试。",
    "log_title": "谁查看过我的记录",
    "log_intro": "医疗机构每次查看您的记录都会留下记录。为保护医务人员隐私，这里只显示机构和岗位。",
    "col_when": "时间",
    "col_facility": "机构",
    "col_role": "岗位",
    "col_what": "查看内容",
    "no_access": "暂时没有查看记录。",
}

_EN: Final[dict[str, str]] = {
    "portal": "Cloud Film",
    "switch": "中文",
    "records_of": "Records of {name}",
    "expires": "This link is valid until {when}",
    "private": "This link opens your medical records. Please do not forward it to anyone.",
    "studies": "Imaging",
    "reports": "Reports",
    "labs": "Lab results",
    "jump": "Jump to",
    "view": "View images",
    "download": "Download DICOM",
    "download_hint": (
        "DICOM files are the original images for doctors and are large; "
        "to look at the images on your phone, use “View images”."
    ),
    "counts": "{series} series · {images} images",
    "hr_title": "HR: mutually recognised by the city's hospitals",
    "hr_sr": "mutually recognised",
    "hr_legend": (
        "HR marks results that the city's hospitals mutually recognise: another hospital "
        "usually does not need to repeat them."
    ),
    "no_studies": "No imaging yet.",
    "no_reports": "No reports yet.",
    "no_labs": "No lab results yet.",
    "conclusion": "Conclusion: ",
    "full_text": "Read the full report",
    "col_item": "Test",
    "col_result": "Result",
    "col_unit": "Unit",
    "col_range": "Reference range",
    "col_flag": "Flag",
    "flag_H": "↑ High",
    "flag_L": "↓ Low",
    "lab_legend": "↑ above the reference range, ↓ below it. Ask your doctor what a result means.",
    "access_log": "Who looked at my records",
    "unlock_title": "Confirm it is you",
    "unlock_intro": "To protect your privacy, please confirm who you are before viewing.",
    "id4_label": "Last 4 characters of your ID card number",
    "id4_hint": "Enter the last 4 characters of your ID card number; if the last one is X, type X.",
    "id4_pattern": "4 characters: digits, the last one may be X",
    "pin_label": "6-digit code printed on your report",
    "pin_hint": "The code is printed on your examination report: 6 digits.",
    "pin_pattern": "6 digits",
    "submit": "Confirm",
    "wrong": "That was not correct. Please try again.",
    "attempts_one": "{n} attempt left.",
    "attempts_many": "{n} attempts left.",
    "attempts_none": "No attempts left.",
    "unlock_help": "If you cannot confirm, ask the hospital for a new viewing code.",
    "err_forged_title": "This link is not valid",
    "err_forged_what": (
        "This link cannot be recognised. It may be incomplete or may have been changed."
    ),
    "err_forged_do": (
        "Check that you copied the whole link. If it still does not open, "
        "ask the hospital for a new viewing code."
    ),
    "err_expired_title": "This link has expired",
    "err_expired_what": "To protect your privacy, viewing links work for a limited time only.",
    "err_expired_do": "Please ask the hospital for a new viewing code.",
    "err_revoked_title": "This link has been withdrawn",
    "err_revoked_what": "This link was withdrawn, at your request or the hospital's.",
    "err_revoked_do": "To keep viewing, please ask the hospital for a new viewing code.",
    "err_locked_title": "This link is locked",
    "err_locked_what": "There were too many wrong answers, so the link was locked to protect you.",
    "err_locked_do": "Please ask the hospital for a new viewing code.",
    "err_not-found_title": "Nothing found here",
    "err_not-found_what": "What you asked for was not found. It may have been removed.",
    "err_not-found_do": "Please go back. If it is still missing, ask the hospital.",
    "err_error_title": "Something went wrong on our side",
    "err_error_what": "The service is not working right now. It is not something you did.",
    "err_error_do": (
        "Please try again in a few minutes. If it keeps failing, "
        "ask the hospital for a new viewing code."
    ),
    "reassure": "Your records are safe with the hospital; nothing has been lost.",
    "retry": "Try again",
    "back_list": "Back to my records",
    "image_alt": "Medical image: {what}",
    "prev": "Previous",
    "next": "Next",
    "slider": "Image position",
    "series": "Series",
    "series_option": "{n}. {what} ({count} images)",
    "window": "Window",
    "preset_soft": "Soft tissue",
    "preset_lung": "Lung",
    "preset_bone": "Bone",
    "preset_brain": "Brain",
    "zoom": "Zoom",
    "zoom_in": "Zoom in",
    "zoom_out": "Zoom out",
    "zoom_reset": "Reset",
    "gestures": "Swipe left or right to step through images, pinch to zoom, drag when zoomed.",
    "noscript": "Stepping and zooming need JavaScript turned on in your browser.",
    "no_images": "This study has no images to show yet.",
    "loading": "Loading…",
    "failed": "This image did not load. Please try again in a moment.",
    "log_title": "Who looked at my records",
    "log_intro": (
        "Every time a hospital opens your records it is logged. To protect staff privacy, "
        "only the facility and the role are shown."
    ),
    "col_when": "When",
    "col_facility": "Facility",
    "col_role": "Role",
    "col_what": "What",
    "no_access": "No one has looked at your records yet.",
}

_TEXT: Final[dict[Lang, dict[str, str]]] = {"zh": _ZH, "en": _EN}


def _t(lang: Lang, key: str, **values: object) -> str:
    return words(_TEXT, lang, key, **values)


def _raw(lang: Lang, key: str) -> str:
    """The text `key` unescaped (for JSON data; never put into markup as is)."""
    return _TEXT[lang][key]


# --- Links ----------------------------------------------------------------------------------


def _set_lang(href: str, lang: Lang) -> str:
    """`href` with its query's lang parameter set to `lang` (other parameters kept verbatim)."""
    parts = urlsplit(href)
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] != "lang"]
    query = "&".join([*kept, f"lang={lang}"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _keep_lang(href: str, lang: Lang) -> str:
    """An onward link that stays in `lang`: Chinese is the default and needs no parameter."""
    if lang == "zh" or not href:
        return href
    if any(p.split("=", 1)[0] == "lang" for p in urlsplit(href).query.split("&")):
        return href
    return _set_lang(href, lang)


def _parent(href: str) -> str:
    """The path one level above `href` ("/s/T/unlock?x" → "/s/T"); "" (this page) if none."""
    path = urlsplit(href).path.rstrip("/")
    return path.rsplit("/", 1)[0] if path.count("/") > 1 else ""


def _window_sep(url: str) -> str:
    """What goes between an image URL and its window parameter."""
    return "&" if "?" in url else "?"


def _attr(value: str) -> str:
    return escape(value, quote=True)


# --- Style and script -----------------------------------------------------------------------
# One stylesheet for every page (a few KB): it never changes, so its hash goes in the CSP.

_CSS: Final = """
:root{color-scheme:light}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:#f1f3f6;color:#111;font:18px/1.6 "PingFang SC","Hiragino Sans GB",
"Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",system-ui,sans-serif}
main{max-width:46rem;margin:0 auto;padding:0 .75rem 2.5rem}
a{color:#0645ad}
h1{font-size:1.5rem;line-height:1.3;margin:1rem 0 .25rem}
h2{font-size:1.3rem;line-height:1.3;margin:1.75rem 0 .5rem}
h3{font-size:1.15rem;line-height:1.35;margin:.25rem 0}
p{margin:.35rem 0}
button,input,select{font:inherit}
:focus-visible{outline:3px solid #e6a100;outline-offset:2px}
.top{display:flex;align-items:center;justify-content:space-between;gap:.5rem;
padding:0 .75rem;min-height:56px;background:#0b3d91;color:#fff}
.top a{color:#fff;font-weight:600}
.brand{font-size:1.15rem;font-weight:700}
.back,a.lang{display:inline-flex;align-items:center;min-height:48px;padding:0 .5rem}
.meta,.muted{color:#3d4450}
.hint{color:#3d4450;font-size:1rem}
.jump{display:flex;flex-wrap:wrap;gap:.25rem 1rem}
.jump a{display:inline-flex;align-items:center;min-height:44px}
.study,.report,.panel,.card{background:#fff;border:1px solid #c4cbd4;border-radius:12px;
padding:1rem;margin:.75rem 0}
.when{font-weight:700}
.button{display:inline-flex;align-items:center;justify-content:center;min-height:52px;
padding:.5rem 1.25rem;border:2px solid #0b57d0;border-radius:10px;background:#0b57d0;
color:#fff;font-size:1.05rem;font-weight:700;text-decoration:none;cursor:pointer}
.button.secondary{background:#fff;color:#0b3d91;border-color:#0b3d91}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:.75rem}
.actions .button{flex:1 1 11rem}
.hr-mark{display:inline-block;margin-left:.35rem;padding:0 .45rem;border-radius:6px;
background:#0a6b3b;color:#fff;font-size:.9rem;font-weight:700;line-height:1.6;
vertical-align:middle}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);
white-space:nowrap}
.conclusion,.text{white-space:pre-wrap;overflow-wrap:anywhere}
details{margin-top:.5rem}
summary{padding:.6rem 0;color:#0645ad;font-weight:600;cursor:pointer}
.table-wrap{overflow-x:auto}
table{width:100%;border-collapse:collapse;font-size:1rem}
th,td{padding:.5rem .35rem;border-bottom:1px solid #d3d8df;text-align:left;vertical-align:top}
thead th{background:#e9edf2;color:#222;font-size:.9rem}
tbody th{font-weight:500}
.flag,.value,.range{white-space:nowrap}
.panel{padding:1rem .6rem}
tr.high{background:#fdecee}
tr.high .value,tr.high .flag{color:#a50017;font-weight:700}
tr.low{background:#e8effc}
tr.low .value,tr.low .flag{color:#0036a3;font-weight:700}
.notice{margin:1rem 0;padding:.6rem .8rem;border-left:5px solid #b06000;background:#fff6e0}
.error{color:#a50017;font-weight:700}
label{display:block;font-weight:700;font-size:1.15rem}
input.answer{display:block;width:100%;max-width:16rem;min-height:60px;margin:.5rem 0 1rem;
padding:.25rem .75rem;border:2px solid #333;border-radius:10px;font-size:1.8rem;
letter-spacing:.3em}
#unlock .button{width:100%;max-width:16rem}
input.answer[aria-invalid=true]{border-color:#a50017}
.viewer{position:relative;height:100vw;max-height:70vh;margin:0 -.75rem;overflow:hidden;
background:#000;touch-action:pan-y;-webkit-user-select:none;user-select:none}
.viewer.zoomed{touch-action:none;cursor:move}
#image{display:block;width:100%;height:100%;object-fit:contain;transform-origin:50% 50%;
-webkit-user-drag:none}
.status{position:absolute;left:.5rem;bottom:.5rem;margin:0;padding:.2rem .6rem;
border-radius:6px;background:rgba(0,0,0,.75);color:#fff}
.stepper{display:flex;align-items:center;gap:.5rem;margin:.75rem 0 .25rem}
.stepper .ctl{flex:1;min-height:64px;padding:.25rem .4rem;font-size:1.25rem;white-space:nowrap}
#counter{min-width:5.5rem;text-align:center;font-size:1.25rem;font-weight:700;
font-variant-numeric:tabular-nums}
#slider{display:block;width:100%;height:48px;margin:0;background:transparent;
-webkit-appearance:none;appearance:none}
#slider::-webkit-slider-runnable-track{height:8px;border-radius:4px;background:#8e99a8}
#slider::-webkit-slider-thumb{width:34px;height:34px;margin-top:-13px;border:3px solid #fff;
border-radius:50%;background:#0b3d91;box-shadow:0 0 0 1px #0b3d91;-webkit-appearance:none}
#slider::-moz-range-track{height:8px;border-radius:4px;background:#8e99a8}
#slider::-moz-range-thumb{width:28px;height:28px;border:3px solid #fff;border-radius:50%;
background:#0b3d91}
.group{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem;margin:.6rem 0}
.group-name{flex-basis:100%;font-weight:700}
.group .ctl{flex:1 1 0;padding:.25rem .4rem}
.group select{flex:1 1 100%}
.ctl{min-width:48px;min-height:48px;padding:.25rem .9rem;border:2px solid #0b3d91;
border-radius:10px;background:#fff;color:#0b3d91;font-weight:700;cursor:pointer}
.ctl.active{background:#0b3d91;color:#fff}
.ctl:disabled{opacity:.4;cursor:default}
select{min-height:48px;max-width:100%;padding:.25rem .5rem;border:2px solid #0b3d91;
border-radius:10px;background:#fff;color:#111}
"""

# The viewer's behaviour. Readable on purpose: short functions, comments on the why.
_VIEWER_JS: Final = """
(function () {
  "use strict";
  // The series list comes with the page (JSON rendered by the server), so the first image is
  // already in the markup and nothing else has to be asked for before it shows.
  var DATA = JSON.parse(document.getElementById("series-data").textContent);
  var PREFETCH = 5;   // images fetched ahead in the direction of travel
  var SWIPE_PX = 24;  // finger travel per image when swiping: a long drag scrubs through
  var MAX_SCALE = 8;
  var SLOW_MS = 400;  // only a slow load shows "loading": flashing it on every step is noise

  var viewer = document.getElementById("viewer");
  var img = document.getElementById("image");
  var counter = document.getElementById("counter");
  var slider = document.getElementById("slider");
  var prevButton = document.getElementById("prev");
  var nextButton = document.getElementById("next");
  var seriesSelect = document.getElementById("series");  // absent with a single series
  var statusBox = document.getElementById("status");
  var presetButtons = document.querySelectorAll("button.preset");

  var s = 0;      // current series
  var i = 0;      // current image, 0-based
  var dir = 1;    // direction of travel, for prefetching
  var preset = presetOf(0);
  var zoom = {scale: 1, x: 0, y: 0};
  var slowTimer = 0;
  var asked = {};   // URLs already prefetched, so none is asked for twice
  var askedCount = 0;
  var warm = [];    // the latest prefetches, held so they are not dropped mid-flight

  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }

  function presetOf(k) {
    var one = DATA.series[k];
    return one && one.preset in DATA.presets ? one.preset : "soft";
  }

  function images() { return DATA.series[s] ? DATA.series[s].images : []; }

  // The URL of image k in the active window, exactly as the server rendered the first one.
  function urlOf(k) {
    var base = images()[k];
    var w = DATA.presets[preset];
    if (!w) { return base; }  // "own": the window the images were made with
    return base + (base.indexOf("?") < 0 ? "?" : "&") + "window=" + w[0] + "," + w[1];
  }

  function say(text) {
    statusBox.textContent = text;
    statusBox.hidden = !text;
  }

  function waiting(on) {
    clearTimeout(slowTimer);
    say("");
    if (on) { slowTimer = setTimeout(function () { say(DATA.text.loading); }, SLOW_MS); }
  }

  // Draw the current state. Setting src on the one visible <img> replaces its pending
  // request, so an older image that arrives late is dropped by the browser and never
  // covers a newer one; the old picture stays up until the new one is ready.
  function show() {
    var n = images().length;
    counter.textContent = (n ? i + 1 : 0) + " / " + n;
    slider.max = String(Math.max(n - 1, 0));
    slider.value = String(i);
    prevButton.disabled = i <= 0;
    nextButton.disabled = i >= n - 1;
    img.setAttribute("data-index", String(i));
    img.setAttribute("data-preset", preset);
    if (!n) { return; }
    var url = urlOf(i);
    if (img.getAttribute("src") !== url) {
      waiting(true);
      img.setAttribute("src", url);
    }
  }

  // Warm the browser's cache with the next few images, after the current one has loaded so
  // they never compete with it on a slow connection.
  function prefetch() {
    var n = images().length;
    for (var k = 1; k <= PREFETCH; k++) {
      var j = i + k * dir;
      if (j < 0 || j >= n) { break; }
      var url = urlOf(j);
      if (asked[url]) { continue; }
      if (askedCount > 3000) { asked = {}; askedCount = 0; }
      asked[url] = true;
      askedCount++;
      var pre = new Image();
      pre.src = url;
      warm.push(pre);
      if (warm.length > 2 * PREFETCH) { warm.shift(); }
    }
  }

  function go(k) {
    var n = images().length;
    k = clamp(k, 0, Math.max(n - 1, 0));
    if (k === i) { return; }
    dir = k > i ? 1 : -1;
    i = k;
    show();
  }

  function step(d) { go(i + d); }

  function setPreset(name) {
    if (!(name in DATA.presets)) { return; }
    preset = name;
    for (var k = 0; k < presetButtons.length; k++) {
      var on = presetButtons[k].getAttribute("data-preset") === name;
      presetButtons[k].classList.toggle("active", on);
      presetButtons[k].setAttribute("aria-pressed", on ? "true" : "false");
    }
    show();
  }

  // Another series starts at its first image, in its own usual window, not zoomed.
  function setSeries(k) {
    if (!DATA.series[k] || k === s) { return; }
    s = k;
    i = 0;
    dir = 1;
    zoomTo(1);
    setPreset(presetOf(k));
  }

  // --- Zoom and pan: a CSS transform on the img, so the browser does the work on the GPU.

  function applyZoom() {
    // Pan only as far as the zoomed image overflows, so it cannot be dragged out of sight.
    var maxX = (zoom.scale - 1) * viewer.clientWidth / 2;
    var maxY = (zoom.scale - 1) * viewer.clientHeight / 2;
    zoom.x = clamp(zoom.x, -maxX, maxX);
    zoom.y = clamp(zoom.y, -maxY, maxY);
    img.style.transform = zoom.scale === 1 ? "" :
      "translate(" + zoom.x + "px," + zoom.y + "px) scale(" + zoom.scale + ")";
    viewer.classList.toggle("zoomed", zoom.scale > 1);
  }

  function zoomTo(scale) {
    zoom.scale = clamp(scale, 1, MAX_SCALE);
    if (zoom.scale === 1) { zoom.x = 0; zoom.y = 0; }
    applyZoom();
  }

  // --- Touch, pen and mouse, through pointer events: one finger swipes (or pans when
  // zoomed), two fingers pinch. The gesture is restarted whenever a finger comes or goes,
  // so lifting one finger of a pinch does not make the image jump.

  var pointers = {};
  var gesture = null;

  function points() {
    var list = [];
    for (var id in pointers) { list.push(pointers[id]); }
    return list;
  }

  function startGesture() {
    var p = points();
    if (p.length === 1) {
      gesture = {kind: zoom.scale > 1 ? "pan" : "swipe", x: p[0].x, y: p[0].y,
                 zx: zoom.x, zy: zoom.y, steps: 0};
    } else if (p.length === 2) {
      gesture = {kind: "pinch", d: Math.max(distance(p), 1), m: middle(p),
                 scale: zoom.scale, zx: zoom.x, zy: zoom.y};
    } else {
      gesture = null;
    }
  }

  function distance(p) { return Math.hypot(p[0].x - p[1].x, p[0].y - p[1].y); }

  function middle(p) { return {x: (p[0].x + p[1].x) / 2, y: (p[0].y + p[1].y) / 2}; }

  function moveGesture() {
    var p = points();
    if (!gesture) { return; }
    if (gesture.kind === "swipe") {
      // Finger to the left brings the next image, like turning a page.
      var steps = Math.trunc((gesture.x - p[0].x) / SWIPE_PX);
      if (steps !== gesture.steps) { step(steps - gesture.steps); gesture.steps = steps; }
    } else if (gesture.kind === "pan") {
      zoom.x = gesture.zx + p[0].x - gesture.x;
      zoom.y = gesture.zy + p[0].y - gesture.y;
      applyZoom();
    } else if (gesture.kind === "pinch" && p.length === 2) {
      var m = middle(p);
      zoom.x = gesture.zx + m.x - gesture.m.x;
      zoom.y = gesture.zy + m.y - gesture.m.y;
      zoomTo(gesture.scale * distance(p) / gesture.d);
    }
  }

  function pointerDown(e) {
    pointers[e.pointerId] = {x: e.clientX, y: e.clientY};
    if (viewer.setPointerCapture) { viewer.setPointerCapture(e.pointerId); }
    startGesture();
  }

  function pointerMove(e) {
    if (!pointers[e.pointerId]) { return; }
    pointers[e.pointerId] = {x: e.clientX, y: e.clientY};
    moveGesture();
    e.preventDefault();
  }

  function pointerUp(e) {
    if (!pointers[e.pointerId]) { return; }
    delete pointers[e.pointerId];
    startGesture();
  }

  // A mouse wheel or trackpad steps through images; with Ctrl (a trackpad pinch) it zooms.
  // Deltas add up so a trackpad's many tiny events do not race through the series.
  var wheelSum = 0;

  function wheel(e) {
    e.preventDefault();
    if (e.ctrlKey) { zoomTo(zoom.scale * Math.exp(-e.deltaY / 200)); return; }
    wheelSum += e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;
    while (Math.abs(wheelSum) >= 50) {
      step(wheelSum > 0 ? 1 : -1);
      wheelSum -= wheelSum > 0 ? 50 : -50;
    }
  }

  function key(e) {
    var tag = e.target && e.target.tagName;
    // The slider and the series list use the arrow keys themselves.
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") { return; }
    var k = e.key;
    if (k === "ArrowRight" || k === "ArrowDown" || k === "PageDown") { step(1); }
    else if (k === "ArrowLeft" || k === "ArrowUp" || k === "PageUp") { step(-1); }
    else if (k === "Home") { go(0); }
    else if (k === "End") { go(images().length - 1); }
    else if (k === "+" || k === "=") { zoomTo(zoom.scale * 1.25); }
    else if (k === "-") { zoomTo(zoom.scale / 1.25); }
    else if (k === "0") { zoomTo(1); }
    else { return; }
    e.preventDefault();
  }

  function click(id, action) {
    var el = document.getElementById(id);
    if (el) { el.addEventListener("click", action); }
  }

  click("prev", function () { step(-1); });
  click("next", function () { step(1); });
  click("zoom-in", function () { zoomTo(zoom.scale * 1.5); });
  click("zoom-out", function () { zoomTo(zoom.scale / 1.5); });
  click("zoom-reset", function () { zoomTo(1); });
  slider.addEventListener("input", function () { go(Number(slider.value)); });
  if (seriesSelect) {
    seriesSelect.addEventListener("change", function () { setSeries(Number(seriesSelect.value)); });
  }
  for (var k = 0; k < presetButtons.length; k++) {
    presetButtons[k].addEventListener("click", function (e) {
      setPreset(e.currentTarget.getAttribute("data-preset"));
    });
  }
  viewer.addEventListener("pointerdown", pointerDown);
  viewer.addEventListener("pointermove", pointerMove);
  viewer.addEventListener("pointerup", pointerUp);
  viewer.addEventListener("pointercancel", pointerUp);
  viewer.addEventListener("wheel", wheel, {passive: false});
  viewer.addEventListener("dblclick", function () { zoomTo(zoom.scale > 1 ? 1 : 2); });
  // Safari's own pinch would zoom the whole page instead of the image.
  viewer.addEventListener("gesturestart", function (e) { e.preventDefault(); });
  document.addEventListener("keydown", key);
  img.addEventListener("load", function () { waiting(false); prefetch(); });
  img.addEventListener("error", function () { waiting(false); say(DATA.text.failed); });

  show();
  // The first image is in the markup: it may have loaded, or failed, before this script ran.
  if (images().length) {
    if (!img.complete) { waiting(true); }
    else if (img.naturalWidth) { prefetch(); }
    else { say(DATA.text.failed); }
  }
})();
"""


# Allows exactly the inline style and script above, images and forms from the gateway only.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; img-src 'self'; "
    f"style-src {csp_hash(_CSS)}; script-src {csp_hash(_VIEWER_JS)}; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


# --- The frame of every page ----------------------------------------------------------------


def _page(lang: Lang, title: str, body: str, *, script: str = "") -> str:
    """A whole HTML5 document; `title` and `body` are safe HTML already."""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{HTML_LANG[lang]}">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # The page's URL is a key to the records: never send it on to another site.
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        # Keeps iOS from turning ID fragments and lab values into phone-number links.
        '<meta name="format-detection" content="telephone=no">\n'
        f"<title>{title} · {_t(lang, 'portal')}</title>\n"
        f"<style>{_CSS}</style>\n"
        "</head>\n"
        f"<body>\n{body}{script}</body>\n</html>\n"
    )


def _top(lang: Lang, here: str = "", *, back: str = "") -> str:
    """The top bar: a back link or the portal's name, and the link to the other language."""
    other = OTHER_LANG[lang]
    start = (
        f'<a class="back" id="back" href="{_attr(back)}">‹ {_t(lang, "back_list")}</a>'
        if back
        else f'<span class="brand">{_t(lang, "portal")}</span>'
    )
    # Named in its own language ("English", "中文"), so whoever needs it can read it.
    switch = (
        f'<a class="lang" href="{_attr(_set_lang(here, other))}" '
        f'hreflang="{HTML_LANG[other]}" lang="{HTML_LANG[other]}">{_t(lang, "switch")}</a>'
    )
    return f'<header class="top">\n{start}\n{switch}\n</header>\n'


def _hr_badge(lang: Lang) -> str:
    return (
        f'<span class="hr-mark" title="{_t(lang, "hr_title")}">HR'
        f'<span class="sr"> {_t(lang, "hr_sr")}</span></span>'
    )


def _meta(when: str, facility: str) -> str:
    return (
        f'<p class="meta"><span class="when">{escape(when)}</span> · '
        f'<span class="facility">{escape(facility)}</span></p>'
    )


# --- The list page --------------------------------------------------------------------------


def _study_card(lang: Lang, study: StudyItem) -> str:
    title = " · ".join(escape(p) for p in (study.modality, study.description) if p)
    badge = _hr_badge(lang) if study.hr_mark else ""
    return (
        '<article class="study">\n'
        f'<p class="meta"><span class="when">{escape(study.when)}</span>{badge}</p>\n'
        f"<h3>{title}</h3>\n"
        f'<p class="facility">{escape(study.facility)}</p>\n'
        f'<p class="counts muted">{_t(lang, "counts", series=study.series, images=study.images)}'
        "</p>\n"
        '<p class="actions">'
        f'<a class="button view" href="{_attr(_keep_lang(study.view_href, lang))}">'
        f"{_t(lang, 'view')}</a>"
        f'<a class="button secondary download" href="{_attr(study.download_href)}" download>'
        f"{_t(lang, 'download')}</a></p>\n"
        "</article>\n"
    )


def _report_card(lang: Lang, report: ReportItem) -> str:
    conclusion = (
        f'<p class="conclusion"><strong>{_t(lang, "conclusion")}</strong>'
        f"{escape(report.conclusion)}</p>\n"
        if report.conclusion
        else ""
    )
    text = (
        f"<details>\n<summary>{_t(lang, 'full_text')}</summary>\n"
        f'<div class="text">{escape(report.text)}</div>\n</details>\n'
        if report.text
        else ""
    )
    return (
        '<article class="report">\n'
        f"<h3>{escape(report.title)}</h3>\n"
        f"{_meta(report.when, report.facility)}\n{conclusion}{text}"
        "</article>\n"
    )


def _lab_row(lang: Lang, row: LabRow) -> str:
    if row.flag in ("H", "L"):
        css = ' class="abnormal high"' if row.flag == "H" else ' class="abnormal low"'
        flag = _t(lang, f"flag_{row.flag}")
    else:
        css, flag = "", ""
    return (
        f'<tr{css}><th scope="row">{escape(row.name)}</th>'
        f'<td class="value">{escape(row.value)}</td><td class="unit">{escape(row.unit)}</td>'
        f'<td class="range">{escape(row.range_text)}</td><td class="flag">{flag}</td></tr>\n'
    )


def _lab_panel(lang: Lang, panel: LabPanel) -> str:
    badge = _hr_badge(lang) if panel.hr_mark else ""
    head = "".join(
        f'<th scope="col">{_t(lang, k)}</th>'
        for k in ("col_item", "col_result", "col_unit", "col_range", "col_flag")
    )
    rows = "".join(_lab_row(lang, r) for r in panel.rows)
    return (
        '<article class="panel">\n'
        f"<h3>{escape(panel.title)}{badge}</h3>\n"
        f"{_meta(panel.when, panel.facility)}\n"
        '<div class="table-wrap"><table>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table></div>\n"
        "</article>\n"
    )


def _section(lang: Lang, sid: str, items: list[str], empty_key: str, intro: str = "") -> str:
    inner = "".join(items) if items else f'<p class="muted empty">{_t(lang, empty_key)}</p>\n'
    return (
        f'<section id="{sid}">\n<h2>{_t(lang, sid)} ({len(items)})</h2>\n{intro}{inner}</section>\n'
    )


def list_page(lang: Lang, view: ShareView) -> str:
    """The resident's records behind one share link: imaging, reports, lab results."""
    jump = "".join(
        f'<a href="#{sid}">{_t(lang, sid)} ({n})</a>'
        for sid, n in (
            ("studies", len(view.studies)),
            ("reports", len(view.reports)),
            ("labs", len(view.labs)),
        )
    )
    studies = _section(
        lang,
        "studies",
        [_study_card(lang, s) for s in view.studies],
        "no_studies",
        f'<p class="hint">{_t(lang, "download_hint")}</p>\n' if view.studies else "",
    )
    reports = _section(lang, "reports", [_report_card(lang, r) for r in view.reports], "no_reports")
    labs = _section(
        lang,
        "labs",
        [_lab_panel(lang, p) for p in view.labs],
        "no_labs",
        f'<p class="hint">{_t(lang, "lab_legend")}</p>\n' if view.labs else "",
    )
    any_hr = any(s.hr_mark for s in view.studies) or any(p.hr_mark for p in view.labs)
    legend = f'<p class="hint legend">{_t(lang, "hr_legend")}</p>\n' if any_hr else ""
    # No href, no link: a share may not cover the access log.
    access_log = (
        '<p class="actions"><a class="button secondary access-log" id="access-log" '
        f'href="{_attr(_keep_lang(view.access_log_href, lang))}">{_t(lang, "access_log")}</a>'
        "</p>\n"
        if view.access_log_href
        else ""
    )
    body = (
        _top(lang, view.base)
        + '<main id="records">\n'
        + f'<h1 id="patient">{_t(lang, "records_of", name=view.patient)}</h1>\n'
        + f'<p class="expires" id="expires">{_t(lang, "expires", when=view.expires)}</p>\n'
        + f'<p class="notice">{_t(lang, "private")}</p>\n'
        + f'<nav class="jump" aria-label="{_t(lang, "jump")}">{jump}</nav>\n'
        + studies
        + reports
        + labs
        + legend
        + access_log
        + "</main>\n"
    )
    return _page(lang, _t(lang, "records_of", name=view.patient), body)


# --- Unlock, errors, access log -------------------------------------------------------------


def _attempts(lang: Lang, attempts_left: int | None) -> str:
    # Chinese sentences follow each other without a space.
    space = "" if lang == "zh" else " "
    if attempts_left is None:
        return ""
    if attempts_left <= 0:
        return space + _t(lang, "attempts_none")
    key = "attempts_one" if attempts_left == 1 else "attempts_many"
    return space + _t(lang, key, n=attempts_left)


def unlock_page(
    lang: Lang,
    action: str,
    kind: UnlockKind,
    error: bool,
    attempts_left: int | None,
) -> str:
    """The form that proves the resident holds the link: POSTs field "answer" to `action`.

    A wrong answer is shown at the action's own URL, which answers POST only: so the language
    link goes to the form's page instead, the action one level up (``<share>/unlock`` →
    ``<share>``).
    """
    if kind == "id4":
        # Chinese ID numbers end in a check character that may be X.
        field = (
            'type="text" inputmode="text" autocapitalize="characters" maxlength="4" '
            f'pattern="[0-9]{{3}}[0-9Xx]" title="{_t(lang, "id4_pattern")}"'
        )
    else:
        field = (
            'type="text" inputmode="numeric" maxlength="6" '
            f'pattern="[0-9]{{6}}" title="{_t(lang, "pin_pattern")}"'
        )
    described = "answer-hint answer-error" if error else "answer-hint"
    message = (
        f'<p class="error" id="answer-error" role="alert">{_t(lang, "wrong")}'
        f"{_attempts(lang, attempts_left)}</p>\n"
        if error
        else ""
    )
    invalid = ' aria-invalid="true"' if error else ""
    body = (
        _top(lang, _parent(action))
        + '<main id="unlock-page">\n'
        + f"<h1>{_t(lang, 'unlock_title')}</h1>\n"
        + f"<p>{_t(lang, 'unlock_intro')}</p>\n"
        + f'<form class="card" id="unlock" method="post" action="{_attr(_keep_lang(action, lang))}"'
        + ' autocomplete="off">\n'
        + f'<label for="answer">{_t(lang, f"{kind}_label")}</label>\n'
        + f'<p class="hint" id="answer-hint">{_t(lang, f"{kind}_hint")}</p>\n'
        + message
        + f'<input class="answer" id="answer" name="answer" {field} required autofocus '
        + f'autocomplete="off" spellcheck="false" aria-describedby="{described}"{invalid}>\n'
        + f'<button class="button" id="submit" type="submit">{_t(lang, "submit")}</button>\n'
        + "</form>\n"
        + f'<p class="muted">{_t(lang, "unlock_help")}</p>\n'
        + "</main>\n"
    )
    return _page(lang, _t(lang, "unlock_title"), body)


def error_page(
    lang: Lang,
    kind: ErrorKind,
) -> str:
    """What went wrong with the link and what to do now; carries no patient data."""
    title = _t(lang, f"err_{kind}_title")
    # An empty href reloads this very URL, query (and so language) included.
    retry = (
        f'<p class="actions"><a class="button" id="retry" href="">{_t(lang, "retry")}</a></p>\n'
        if kind == "error"
        else ""
    )
    body = (
        _top(lang)
        + f'<main id="problem" class="problem" data-kind="{_attr(kind)}">\n'
        + f"<h1>{title}</h1>\n"
        + f'<p class="what">{_t(lang, f"err_{kind}_what")}</p>\n'
        + f'<p class="notice todo">{_t(lang, f"err_{kind}_do")}</p>\n'
        + retry
        + f'<p class="muted">{_t(lang, "reassure")}</p>\n'
        + "</main>\n"
    )
    return _page(lang, title, body)


def access_log_page(lang: Lang, base: str, rows: tuple[AccessRow, ...]) -> str:
    """Who looked at the resident's records: when, which facility, which role, what."""
    head = "".join(
        f'<th scope="col">{_t(lang, k)}</th>'
        for k in ("col_when", "col_facility", "col_role", "col_what")
    )
    lines = "".join(
        f'<tr class="access"><td class="when">{escape(r.when)}</td>'
        f"<td>{escape(r.facility)}</td><td>{escape(r.role)}</td><td>{escape(r.what)}</td></tr>\n"
        for r in rows
    )
    table = (
        '<div class="table-wrap"><table id="log">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{lines}</tbody>\n</table></div>\n"
        if rows
        else f'<p class="muted empty" id="log-empty">{_t(lang, "no_access")}</p>\n'
    )
    body = (
        _top(lang, back=_keep_lang(base, lang))
        + '<main id="access">\n'
        + f"<h1>{_t(lang, 'log_title')}</h1>\n"
        + f'<p class="hint">{_t(lang, "log_intro")}</p>\n'
        + table
        + "</main>\n"
    )
    return _page(lang, _t(lang, "log_title"), body)


# --- The viewer -----------------------------------------------------------------------------


def _preset_name(name: str) -> str:
    return name if name in PRESETS or name == OWN_WINDOW else DEFAULT_PRESET


def _series_json(lang: Lang, view: StudyView) -> str:
    """The viewer's data as JSON that is safe inside a script element.

    Every ``<`` becomes ``\\u003c`` (still the same JSON), so no value can close the element
    or open a comment; ``>`` and ``&`` likewise, for good measure.
    """
    data = {
        "presets": {**{name: list(cw) for name, cw in PRESETS.items()}, OWN_WINDOW: None},
        "series": [
            {
                "uid": s.uid,
                "description": s.description,
                "modality": s.modality,
                "images": list(s.images),
                "preset": _preset_name(s.default_preset),
            }
            for s in view.series
        ],
        "text": {"loading": _raw(lang, "loading"), "failed": _raw(lang, "failed")},
    }
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _series_label(lang: Lang, n: int, series: SeriesView) -> str:
    what = " ".join(p for p in (series.modality, series.description) if p)
    return _t(lang, "series_option", n=n, what=what, count=len(series.images))


def viewer_page(lang: Lang, view: StudyView) -> str:
    """The image viewer of one study: step, scrub, window presets, zoom and pan."""
    first = view.series[0] if view.series else None
    preset = _preset_name(first.default_preset) if first else DEFAULT_PRESET
    count = len(first.images) if first else 0
    if first and first.images:
        url = first.images[0]
        if preset != OWN_WINDOW:
            center, width = PRESETS[preset]
            url = f"{url}{_window_sep(url)}window={center},{width}"
        src = f' src="{_attr(url)}"'
        status = '<p class="status" id="status" role="status" hidden></p>'
    else:
        src = ""
        status = f'<p class="status" id="status" role="status">{_t(lang, "no_images")}</p>'
    what = " ".join(p for p in (view.description, first.description if first else "") if p)
    none = " disabled" if count <= 1 else ""

    if len(view.series) > 1:
        options = "".join(
            f'<option value="{k}"{" selected" if k == 0 else ""}>'
            f"{_series_label(lang, k + 1, s)}</option>"
            for k, s in enumerate(view.series)
        )
        series = (
            f'<p class="group"><label class="group-name" for="series">{_t(lang, "series")}</label>'
            f'<select id="series">{options}</select></p>\n'
        )
    elif first:
        series = f'<p class="muted series-name">{_series_label(lang, 1, first)}</p>\n'
    else:
        series = ""

    presets = "".join(
        f'<button type="button" class="ctl preset{" active" if name == preset else ""}" '
        f'data-preset="{name}" aria-pressed="{"true" if name == preset else "false"}">'
        f"{_t(lang, f'preset_{name}')}</button>"
        for name in PRESETS
    )
    zoom = "".join(
        f'<button type="button" class="ctl" id="{bid}">{sym}{_t(lang, key)}</button>'
        for bid, key, sym in (
            ("zoom-out", "zoom_out", "− "),
            ("zoom-in", "zoom_in", "+ "),
            ("zoom-reset", "zoom_reset", ""),
        )
    )
    body = (
        _top(lang, back=_keep_lang(view.back_href, lang))
        + '<main id="study">\n'
        + f"<h1>{escape(view.description) or _t(lang, 'portal')}</h1>\n"
        + f"{_meta(view.when, view.facility)}\n"
        + '<div class="viewer" id="viewer">'
        + f'<img id="image"{src} alt="{_t(lang, "image_alt", what=what)}" '
        + f'data-index="0" data-preset="{preset}" draggable="false">'
        + f"{status}</div>\n"
        + '<div class="stepper">'
        + f'<button type="button" class="ctl" id="prev" disabled>‹ {_t(lang, "prev")}</button>'
        + f'<span id="counter">{1 if count else 0} / {count}</span>'
        + f'<button type="button" class="ctl" id="next"{none}>{_t(lang, "next")} ›</button>'
        + "</div>\n"
        + f'<input type="range" id="slider" min="0" max="{max(count - 1, 0)}" value="0" step="1"'
        + f' aria-label="{_t(lang, "slider")}"{none}>\n'
        + series
        + f'<div class="group" role="group" aria-label="{_t(lang, "window")}">'
        + f'<span class="group-name">{_t(lang, "window")}</span>{presets}</div>\n'
        + f'<div class="group" role="group" aria-label="{_t(lang, "zoom")}">'
        + f'<span class="group-name">{_t(lang, "zoom")}</span>{zoom}</div>\n'
        + f'<p class="hint">{_t(lang, "gestures")}</p>\n'
        + f'<noscript><p class="notice">{_t(lang, "noscript")}</p></noscript>\n'
        + '<p class="actions">'
        + '<a class="button secondary download" id="download" '
        + f'href="{_attr(view.download_href)}" download>{_t(lang, "download")}</a></p>\n'
        + "</main>\n"
    )
    script = (
        f'<script type="application/json" id="series-data">{_series_json(lang, view)}</script>\n'
        f"<script>{_VIEWER_JS}</script>\n"
    )
    return _page(lang, escape(view.description) or _t(lang, "portal"), body, script=script)
