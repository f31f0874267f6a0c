"""The resident portal's pages: both languages, escaping, stable hooks, and the viewer's script.

Pages are parsed with a strict tree builder (every non-void element closed, in order), which
also gives the small selector engine the tests use in place of a browser. The viewer's
JavaScript runs under Node.js against a minimal fake DOM when `node` is installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from typing import Any, get_args, get_type_hints

import pytest

from gateway.portal_views import (
    _TEXT,
    CONTENT_SECURITY_POLICY,
    OWN_WINDOW,
    PRESETS,
    AccessRow,
    ErrorKind,
    LabPanel,
    LabRow,
    Lang,
    ReportItem,
    SeriesView,
    ShareView,
    StudyItem,
    StudyView,
    access_log_page,
    error_page,
    list_page,
    unlock_page,
    viewer_page,
)
from tests.html_tree import Node, one, parse, select

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LANGS: tuple[Lang, ...] = ("zh", "en")
HTML_LANG = {"zh": "zh-CN", "en": "en"}
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "forged",
    "expired",
    "revoked",
    "locked",
    "not-found",
    "error",
)
PAGE_BUDGET = 30_000  # bytes of a page without its data


def lab_rows() -> tuple[LabRow, ...]:
    return (
        LabRow("白细胞", "11.2", "10^9/L", "3.5-9.5", "H"),
        LabRow("血红蛋白", "100", "g/L", "115-150", "L"),
        LabRow("血小板", "200", "10^9/L", "125-350", "N"),
        LabRow("备注", "见报告", "", "", ""),
    )


def share(
    *, study_hr: tuple[bool, ...] = (True, False), lab_hr: tuple[bool, ...] = (False,)
) -> ShareView:
    studies = tuple(
        StudyItem(
            facility=f"市第{k + 1}人民医院",
            when=f"2026-11-2{k} 08:30",
            modality="CT",
            description=f"胸部平扫 {k}",
            series=3,
            images=412,
            hr_mark=hr,
            view_href=f"/portal/s/TOKEN/studies/f{k}/1.2.{k}",
            download_href=f"/portal/s/TOKEN/facilities/f{k}/studies/1.2.{k}/archive.zip",
        )
        for k, hr in enumerate(study_hr)
    )
    labs = tuple(
        LabPanel("市中心医院", f"2026-11-1{k} 07:50", f"血常规 {k}", hr, lab_rows())
        for k, hr in enumerate(lab_hr)
    )
    report = ReportItem(
        "市中心医院", "2026-11-20 10:00", "胸部CT报告", "双肺未见异常。", "所见：\n清晰。"
    )
    return ShareView(
        patient="张*明",
        expires="2026-11-27 08:30",
        base="/portal/s/TOKEN",
        studies=studies,
        reports=(report,),
        labs=labs,
        access_log_href="/portal/s/TOKEN/access-log",
    )


def evil_share() -> ShareView:
    """Every upstream value hostile."""
    return ShareView(
        patient=EVIL,
        expires=EVIL,
        base='/portal/s/T"><script>',
        studies=(StudyItem(EVIL, EVIL, EVIL, EVIL, 1, 2, True, '/v?a="><x>', '/d?a="><x>'),),
        reports=(ReportItem(EVIL, EVIL, EVIL, EVIL, EVIL),),
        labs=(LabPanel(EVIL, EVIL, EVIL, True, (LabRow(EVIL, EVIL, EVIL, EVIL, "H"),)),),
        access_log_href='/log?a="><x>',
    )


def series(n: int, root: str = "/img/", preset: str = "soft", desc: str = "平扫") -> SeriesView:
    return SeriesView(
        uid=f"1.2.840.{n}",
        description=desc,
        modality="CT",
        images=tuple(f"{root}{k}" for k in range(n)),
        default_preset=preset,
    )


def study(*series_views: SeriesView, description: str = "胸部CT") -> StudyView:
    return StudyView(
        facility="市第一人民医院",
        when="2026-11-20 08:30",
        description=description,
        series=series_views,
        download_href="/portal/s/TOKEN/facilities/f1/studies/1.2/archive.zip",
        back_href="/portal/s/TOKEN",
    )


def access_rows() -> tuple[AccessRow, ...]:
    return (
        AccessRow("2026-11-21 09:12", "市第一人民医院", "医生", "影像检查"),
        AccessRow("2026-11-20 15:40", "市中心医院", "检验科", "检验结果"),
    )


def all_pages(lang: Lang) -> dict[str, str]:
    pages = {
        "list": list_page(lang, share()),
        "list-empty": list_page(
            lang, ShareView("李*", "2026-12-01 00:00", "/portal/s/T", (), (), (), "")
        ),
        "unlock-id4": unlock_page(lang, "/portal/s/T/unlock", "id4", False, None),
        "unlock-pin-error": unlock_page(lang, "/portal/s/T/unlock", "pin", True, 2),
        "viewer": viewer_page(lang, study(series(20), series(5, "/r?i=", "lung"))),
        "viewer-empty": viewer_page(lang, study()),
        "access-log": access_log_page(lang, "/portal/s/T", access_rows()),
        "access-log-empty": access_log_page(lang, "/portal/s/T", ()),
    }
    for kind in ERROR_KINDS:
        pages[f"error-{kind}"] = error_page(lang, kind)
    return pages


# --- Every page -----------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_every_page_renders_as_a_small_offline_html5_document(lang: Lang) -> None:
    other = "en" if lang == "zh" else "zh"
    for name, page in all_pages(lang).items():
        root = parse(page)
        assert page.startswith("<!DOCTYPE html>\n"), name
        assert one(root, "html").attrs["lang"] == HTML_LANG[lang], name
        assert one(root, "meta[charset]").attrs["charset"] == "utf-8", name
        viewport = one(root, "meta[name=viewport]").attrs["content"]
        assert viewport == "width=device-width, initial-scale=1", name
        assert one(root, "head title").text.strip(), name
        assert len(select(root, "head style")) == 1, name
        switch = one(root, "a.lang")
        assert f"lang={other}" in switch.attrs["href"], name
        assert switch.attrs["lang"] == HTML_LANG[other], name
        # Nothing from the internet: no URL with a scheme, no linked style, no script file.
        assert "http://" not in page and "https://" not in page, name
        assert not select(root, "link"), name
        assert all("src" not in s.attrs for s in select(root, "script")), name
        for node in root.descendants():
            for attr in ("src", "href", "action"):
                assert "//" not in node.attrs.get(attr, ""), (name, node.attrs)
        # No inline handlers or style attributes (the CSP would block them anyway).
        assert not re.search(r"\son[a-z]+=|\sstyle=", page), name
        ids = [n.attrs["id"] for n in root.descendants() if "id" in n.attrs]
        assert len(ids) == len(set(ids)), (name, ids)
        data = "".join(s.text for s in select(root, "script[type=application/json]"))
        assert len(page.encode()) - len(data.encode()) < PAGE_BUDGET, name


def test_both_languages_have_the_same_words() -> None:
    assert _TEXT["zh"].keys() == _TEXT["en"].keys()
    differing = [k for k in _TEXT["zh"] if _TEXT["zh"][k] == _TEXT["en"][k]]
    assert differing == [], differing


@pytest.mark.parametrize("lang", LANGS)
def test_the_policy_allows_exactly_the_inline_style_and_script(lang: Lang) -> None:
    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    for name, page in all_pages(lang).items():
        root = parse(page)
        assert sha(one(root, "style").text) in CONTENT_SECURITY_POLICY, name
        for script in select(root, "script"):
            if script.attrs.get("type") != "application/json":
                assert sha(script.text) in CONTENT_SECURITY_POLICY, name
    assert "http" not in CONTENT_SECURITY_POLICY


# --- The list page --------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_list_page_has_the_stable_hooks(lang: Lang) -> None:
    view = share()
    root = parse(list_page(lang, view))
    assert "张*明" in one(root, "h1").text
    assert "2026-11-27 08:30" in one(root, "#expires").text
    studies = select(root, "#studies .study")
    assert len(studies) == 2
    for card, item in zip(studies, view.studies, strict=True):
        assert item.when in card.text and item.facility in card.text
        assert f"CT · {item.description}" in card.text
        assert "3" in card.text and "412" in card.text
        view_link = one(card, "a.view")
        assert view_link.attrs["href"].startswith(item.view_href)
        assert one(card, "a.download").attrs["href"] == item.download_href
        assert "download" in one(card, "a.download").attrs
    assert len(select(root, "#reports .report")) == 1
    assert len(select(root, "#reports .report details summary")) == 1
    assert len(select(root, "#labs .panel")) == 1
    assert len(select(root, "#labs .panel table thead th")) == 5
    assert len(select(root, "a.lang")) == 1
    assert one(root, "a#access-log").attrs["href"].startswith(view.access_log_href)
    order = [n.attrs["id"] for n in select(root, "section")]
    assert order == ["studies", "reports", "labs"]


def test_list_page_words_follow_the_language() -> None:
    zh, en = parse(list_page("zh", share())), parse(list_page("en", share()))
    assert one(zh, "#studies h2").text.startswith("影像检查")
    assert one(en, "#studies h2").text.startswith("Imaging")
    assert [a.text for a in select(zh, ".study a.view")] == ["查看影像"] * 2
    assert [a.text for a in select(en, ".study a.download")] == ["Download DICOM"] * 2
    assert one(zh, "#reports h2").text.startswith("检查报告")
    assert one(en, "#labs h2").text.startswith("Lab results")


def test_onward_links_stay_in_english_and_chinese_needs_no_parameter() -> None:
    view = share()
    zh, en = parse(list_page("zh", view)), parse(list_page("en", view))
    assert one(zh, "a.lang").attrs["href"] == "/portal/s/TOKEN?lang=en"
    assert one(en, "a.lang").attrs["href"] == "/portal/s/TOKEN?lang=zh"
    assert select(zh, ".study a.view")[0].attrs["href"] == view.studies[0].view_href
    assert select(en, ".study a.view")[0].attrs["href"] == view.studies[0].view_href + "?lang=en"
    already = "/portal/s/TOKEN/studies/f/1?lang=en"
    assert access_log_page("en", already, ()).count('href="/portal/s/TOKEN/studies/f/1?lang=en"')
    assert "lang=en&amp;lang=en" not in access_log_page("en", already, ())
    unlock = parse(unlock_page("en", "/portal/s/T/unlock", "pin", False, None))
    assert one(unlock, "form").attrs["action"] == "/portal/s/T/unlock?lang=en"
    # A wrong answer is shown at the POST-only action: the switch goes to the form's page.
    assert one(unlock, "a.lang").attrs["href"] == "/portal/s/T?lang=zh"
    kept = parse(unlock_page("zh", "/portal/s/T/unlock?lang=zh", "id4", True, 2))
    assert one(kept, "form").attrs["action"] == "/portal/s/T/unlock?lang=zh"
    assert one(kept, "a.lang").attrs["href"] == "/portal/s/T?lang=en"
    assert one(parse(error_page("zh", "expired")), "a.lang").attrs["href"] == "?lang=en"


def test_no_access_log_link_without_an_href() -> None:
    view = share()
    root = parse(list_page("zh", ShareView(**{**_fields(view), "access_log_href": ""})))
    assert not select(root, "#access-log")


def _fields(view: ShareView) -> dict[str, Any]:
    return {name: getattr(view, name) for name in view.__slots__}


@pytest.mark.parametrize("lang", LANGS)
def test_abnormal_rows_are_marked_by_class_arrow_and_word(lang: Lang) -> None:
    root = parse(list_page(lang, share()))
    rows = select(root, "#labs tbody tr")
    assert len(rows) == 4
    abnormal = select(root, "#labs tr.abnormal")
    assert abnormal == rows[:2]
    high, low = abnormal
    assert "high" in high.classes and "↑" in one(high, "td.flag").text
    assert "low" in low.classes and "↓" in one(low, "td.flag").text
    assert one(high, "td.flag").text.strip() != "↑"  # a word too, not only the arrow
    for normal in rows[2:]:
        assert not normal.classes
        assert "↑" not in normal.text and "↓" not in normal.text
    assert [one(r, "td.value").text for r in rows] == ["11.2", "100", "200", "见报告"]


@pytest.mark.parametrize(
    ("study_hr", "lab_hr"),
    [((), ()), ((False,), (False,)), ((True,), ()), ((), (True, False)), ((True, True), (True,))],
)
def test_the_hr_badge_appears_exactly_when_marked(
    study_hr: tuple[bool, ...], lab_hr: tuple[bool, ...]
) -> None:
    for lang in LANGS:
        root = parse(list_page(lang, share(study_hr=study_hr, lab_hr=lab_hr)))
        assert len(select(root, ".hr-mark")) == sum(study_hr) + sum(lab_hr)
        for card, hr in zip(select(root, "#studies .study"), study_hr, strict=True):
            assert len(select(card, ".hr-mark")) == int(hr)
        for panel, hr in zip(select(root, "#labs .panel"), lab_hr, strict=True):
            assert len(select(panel, ".hr-mark")) == int(hr)
        assert bool(select(root, ".legend")) == any(study_hr + lab_hr)


@pytest.mark.parametrize("lang", LANGS)
def test_upstream_values_are_escaped_everywhere(lang: Lang) -> None:
    pages = {
        "list": list_page(lang, evil_share()),
        "log": access_log_page(lang, EVIL, (AccessRow(EVIL, EVIL, EVIL, EVIL),)),
        "unlock": unlock_page(lang, '/u?a="><x>', "id4", True, 1),
        "viewer": viewer_page(
            lang, study(SeriesView(EVIL, EVIL, EVIL, ('/i?a="><x>',), EVIL), description=EVIL)
        ),
    }
    for name, page in pages.items():
        assert EVIL not in page, name
        assert '"><x>' not in page and "<x>" not in page, name
        root = parse(page)
        if name != "unlock":  # the unlock page shows no upstream value, only its action
            assert ESCAPED in page or "\\u003cscript" in page, name
        # Escaped once, not twice: what the browser shows is the value itself.
        assert "&amp;lt;" not in page, name
        assert all(n.tag != "x" for n in root.descendants()), name
        scripts = select(root, "script")
        assert len(scripts) == (2 if name == "viewer" else 0), name
    list_root = parse(pages["list"])
    assert EVIL in one(list_root, "h1").text
    assert one(list_root, ".study h3").text == f"{EVIL} · {EVIL}"
    assert one(list_root, ".study a.view").attrs["href"].startswith('/v?a="><x>')
    assert one(list_root, "#reports .text").text == EVIL
    assert one(list_root, "#labs tr.abnormal th").text == EVIL


# --- Unlock, errors, access log -------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_unlock_form_asks_the_right_question(lang: Lang) -> None:
    id4 = parse(unlock_page(lang, "/portal/s/T/unlock", "id4", False, None))
    pin = parse(unlock_page(lang, "/portal/s/T/unlock", "pin", False, None))
    for root in (id4, pin):
        form = one(root, "form#unlock")
        assert form.attrs["method"] == "post"
        assert form.attrs["action"].startswith("/portal/s/T/unlock")
        answer = one(form, "input[name=answer]")
        assert answer.attrs["id"] == "answer" and "required" in answer.attrs
        assert one(form, "label").attrs["for"] == "answer"
        assert one(form, "button[type=submit]")
        assert not select(root, "#answer-error")
        assert "aria-invalid" not in answer.attrs
    assert one(id4, "input#answer").attrs["maxlength"] == "4"
    assert one(pin, "input#answer").attrs["maxlength"] == "6"
    assert one(pin, "input#answer").attrs["inputmode"] == "numeric"
    assert re.fullmatch(one(id4, "input#answer").attrs["pattern"], "123X")
    assert re.fullmatch(one(pin, "input#answer").attrs["pattern"], "012345")
    zh_id4 = parse(unlock_page("zh", "/u", "id4", False, None))
    assert "身份证号后四位" in one(zh_id4, "label").text
    assert "6" in one(parse(unlock_page("zh", "/u", "pin", False, None)), "label").text


@pytest.mark.parametrize("lang", LANGS)
def test_unlock_error_says_how_many_attempts_are_left(lang: Lang) -> None:
    for left in (3, 1):
        root = parse(unlock_page(lang, "/u", "pin", True, left))
        message = one(root, "#answer-error")
        assert message.attrs["role"] == "alert"
        assert str(left) in message.text
        assert one(root, "input#answer").attrs["aria-invalid"] == "true"
    unknown = one(parse(unlock_page(lang, "/u", "pin", True, None)), "#answer-error").text
    assert not re.search(r"\d", unknown)
    en_one = one(parse(unlock_page("en", "/u", "pin", True, 1)), "#answer-error").text
    assert "1 attempt left" in en_one


def test_error_pages_differ_by_kind_and_language_and_carry_no_patient_data() -> None:
    assert set(ERROR_KINDS) == set(get_args(get_type_hints(error_page)["kind"]))
    view = share()
    private = [view.patient, *(s.facility for s in view.studies), view.base, "TOKEN"]
    texts: set[str] = set()
    titles: set[str] = set()
    for lang in LANGS:
        for kind in ERROR_KINDS:
            page = error_page(lang, kind)
            root = parse(page)
            main = one(root, "main#problem")
            assert main.attrs["data-kind"] == kind
            texts.add(main.text)
            titles.add(one(root, "h1").text)
            assert one(root, ".todo").text.strip()
            assert all(p not in page for p in private)
            assert not select(root, "form") and not select(root, "script")
    assert len(texts) == len(titles) == 2 * len(ERROR_KINDS)
    for kind in ("expired", "revoked", "locked"):
        assert "查看码" in error_page("zh", kind)
        assert "new viewing code" in error_page("en", kind)


@pytest.mark.parametrize("lang", LANGS)
def test_access_log_lists_facility_and_role(lang: Lang) -> None:
    root = parse(access_log_page(lang, "/portal/s/T", access_rows()))
    rows = select(root, "#log tbody tr")
    assert [[c.text for c in select(r, "td")] for r in rows] == [
        ["2026-11-21 09:12", "市第一人民医院", "医生", "影像检查"],
        ["2026-11-20 15:40", "市中心医院", "检验科", "检验结果"],
    ]
    assert len(select(root, "#log thead th")) == 4
    assert one(root, "a#back").attrs["href"].startswith("/portal/s/T")
    empty = parse(access_log_page(lang, "/portal/s/T", ()))
    assert not select(empty, "#log") and one(empty, "#log-empty").text


# --- The viewer -----------------------------------------------------------------------------


def series_data(root: Node) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(one(root, "script#series-data").text)
    return data


@pytest.mark.parametrize(
    ("root_url", "first_src"),
    [("/img/", "/img/0?window=40,400"), ("/render?frame=", "/render?frame=0&window=40,400")],
)
@pytest.mark.parametrize("lang", LANGS)
def test_viewer_starts_on_the_first_image_in_the_default_window(
    lang: Lang, root_url: str, first_src: str
) -> None:
    root = parse(viewer_page(lang, study(series(300, root_url), series(4, "/x/", "lung"))))
    image = one(root, "#viewer img#image")
    assert image.attrs["src"] == first_src
    assert image.attrs["data-index"] == "0" and image.attrs["data-preset"] == "soft"
    assert one(root, "#counter").text == "1 / 300"
    slider = one(root, "input#slider")
    assert (slider.attrs["type"], slider.attrs["min"], slider.attrs["max"]) == ("range", "0", "299")
    assert "disabled" in one(root, "button#prev").attrs
    assert "disabled" not in one(root, "button#next").attrs
    presets = select(root, "button.preset")
    assert [b.attrs["data-preset"] for b in presets] == list(PRESETS)
    assert [b.attrs["data-preset"] for b in select(root, "button.preset.active")] == ["soft"]
    for control in ("#zoom-in", "#zoom-out", "#zoom-reset", "a#download", "a#back"):
        one(root, control)
    assert [o.attrs["value"] for o in select(root, "select#series option")] == ["0", "1"]
    data = series_data(root)
    assert data["presets"] == {**{k: list(v) for k, v in PRESETS.items()}, OWN_WINDOW: None}
    assert [s["preset"] for s in data["series"]] == ["soft", "lung"]
    assert data["series"][0]["images"][:2] == [f"{root_url}0", f"{root_url}1"]


def test_a_series_in_its_own_window_opens_without_a_window_parameter() -> None:
    """MR, ultrasound and radiographs: HU presets mean nothing; their own window is used."""
    root = parse(viewer_page("zh", study(series(3, "/mr/", OWN_WINDOW))))
    image = one(root, "#viewer img#image")
    assert image.attrs["src"] == "/mr/0" and image.attrs["data-preset"] == OWN_WINDOW
    assert series_data(root)["series"][0]["preset"] == OWN_WINDOW


def test_viewer_uses_the_series_default_window_and_hides_a_lone_selector() -> None:
    root = parse(viewer_page("zh", study(series(1, "/a?b=", "lung"))))
    image = one(root, "img#image")
    assert image.attrs["src"] == "/a?b=0&window=-600,1500"
    assert image.attrs["data-preset"] == "lung"
    assert one(root, "button.preset.active").attrs["data-preset"] == "lung"
    assert not select(root, "select#series")
    assert "disabled" in one(root, "button#next").attrs
    unknown = parse(viewer_page("zh", study(series(2, "/a/", "mediastinum"))))
    assert one(unknown, "img#image").attrs["src"] == "/a/0?window=40,400"


def test_viewer_without_images_still_renders() -> None:
    root = parse(viewer_page("en", study()))
    assert "src" not in one(root, "img#image").attrs
    assert one(root, "#counter").text == "0 / 0"
    assert one(root, "#status").text
    assert series_data(root)["series"] == []


def test_viewer_embeds_the_series_json_safely() -> None:
    hostile = '</script><script>alert(1)</script><!-- "&'
    view = study(SeriesView("1.2", hostile, "CT", ("/i/0", "/i/1"), "soft"), description=hostile)
    page = viewer_page("en", view)
    assert "</script><script>alert(1)" not in page
    root = parse(page)
    scripts = select(root, "script")
    assert len(scripts) == 2
    assert scripts[0].attrs == {"type": "application/json", "id": "series-data"}
    raw = scripts[0].text
    assert "<" not in raw and ">" not in raw
    data = series_data(root)
    assert data["series"][0]["description"] == hostile
    assert data["series"][0]["images"] == ["/i/0", "/i/1"]
    assert one(root, "h1").text == hostile


# --- The viewer's script, run by Node.js ----------------------------------------------------

# A fake DOM just big enough for the viewer's script: elements by id, the preset buttons,
# events fired by hand, and Image() recording what is prefetched. Prints a snapshot of the
# viewer after each action.
HARNESS = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));

class El {
  constructor(spec) {
    this.tagName = spec.tag.toUpperCase();
    this.attrs = Object.assign({}, spec.attrs);
    this.listeners = {};
    this.style = {transform: ""};
    this.hidden = "hidden" in this.attrs;
    this.disabled = "disabled" in this.attrs;
    this.textContent = spec.text || "";
    this.value = this.attrs.value || "";
    this.max = this.attrs.max || "";
    this.clientWidth = 400;
    this.clientHeight = 400;
    this.complete = false;
    this.naturalWidth = 0;
    const classes = new Set((this.attrs["class"] || "").split(/\s+/).filter(Boolean));
    this.classList = {
      toggle(c, on) { if (on) { classes.add(c); } else { classes.delete(c); } },
      contains(c) { return classes.has(c); },
    };
  }
  getAttribute(n) { return n in this.attrs ? this.attrs[n] : null; }
  setAttribute(n, v) { this.attrs[n] = String(v); }
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); }
  setPointerCapture() {}
  fire(type, extra) {
    const e = Object.assign({type, target: this, currentTarget: this, preventDefault() {}}, extra);
    (this.listeners[type] || []).forEach((f) => f(e));
  }
}

const byId = {};
for (const spec of input.elements) { byId[spec.attrs.id] = new El(spec); }
const presets = input.presets.map((spec) => new El(spec));
const body = new El({tag: "body", attrs: {}});
const document = new El({tag: "html", attrs: {}});
document.getElementById = (id) => byId[id] || null;
document.querySelectorAll = (sel) => (sel === "button.preset" ? presets : []);
const prefetched = [];
function Image() { const el = new El({tag: "img", attrs: {}}); prefetched.push(el); return el; }

vm.runInNewContext(input.script, {
  document, Image, setTimeout: () => 1, clearTimeout: () => {},
});

const img = byId.image;
function snapshot(action) {
  return {
    action,
    src: img.getAttribute("src"),
    index: img.getAttribute("data-index"),
    preset: img.getAttribute("data-preset"),
    active: presets.filter((b) => b.classList.contains("active"))
      .map((b) => b.attrs["data-preset"]),
    counter: byId.counter.textContent,
    slider: byId.slider.value,
    prev: byId.prev.disabled,
    next: byId.next.disabled,
    transform: img.style.transform,
    prefetched: prefetched.map((p) => p.src),
  };
}

const out = [snapshot(["start"])];
for (const action of input.actions) {
  const [what, arg] = action;
  if (what === "click") {
    (byId[arg] || presets.find((b) => b.attrs["data-preset"] === arg)).fire("click");
  }
  else if (what === "load") { img.fire("load"); }
  else if (what === "key") { document.fire("keydown", {key: arg, target: body}); }
  else if (what === "slide") { byId.slider.value = String(arg); byId.slider.fire("input"); }
  else if (what === "series") { byId.series.value = String(arg); byId.series.fire("change"); }
  else if (what === "swipe") {
    const v = byId.viewer;
    v.fire("pointerdown", {pointerId: 1, clientX: 300, clientY: 200});
    v.fire("pointermove", {pointerId: 1, clientX: 300 - arg / 2, clientY: 200});
    v.fire("pointermove", {pointerId: 1, clientX: 300 - arg, clientY: 200});
    v.fire("pointerup", {pointerId: 1, clientX: 300 - arg, clientY: 200});
  } else if (what === "pinch") {
    const v = byId.viewer;
    v.fire("pointerdown", {pointerId: 1, clientX: 150, clientY: 200});
    v.fire("pointerdown", {pointerId: 2, clientX: 250, clientY: 200});
    v.fire("pointermove", {pointerId: 2, clientX: 150 + 100 * arg, clientY: 200});
    v.fire("pointerup", {pointerId: 2});
    v.fire("pointerup", {pointerId: 1});
  }
  out.push(snapshot(action));
}
process.stdout.write(JSON.stringify(out));
"""


def run_viewer(page: str, actions: list[list[Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the viewer's script is not run")
    root = parse(page)

    def spec(n: Node) -> dict[str, Any]:
        return {"tag": n.tag, "attrs": n.attrs, "text": n.text}

    scripts = select(root, "script")
    payload = {
        "elements": [spec(n) for n in root.descendants() if "id" in n.attrs],
        "presets": [spec(n) for n in select(root, "button.preset")],
        "script": next(s.text for s in scripts if "type" not in s.attrs),
        "actions": actions,
    }
    done = subprocess.run(
        [node, "-e", HARNESS],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    snapshots: list[dict[str, Any]] = json.loads(done.stdout)
    return snapshots


def test_the_viewer_script_steps_windows_switches_and_zooms() -> None:
    first = tuple(f"/img/{k}" for k in range(12))
    page = viewer_page(
        "zh",
        study(
            SeriesView("1", "平扫", "CT", first, "soft"),
            SeriesView("2", "肺窗", "CT", tuple(f"/r?f={k}" for k in range(3)), "lung"),
        ),
    )

    def url(k: int, window: str = "40,400") -> str:
        return f"/img/{k}?window={window}"

    steps = run_viewer(
        page,
        [
            ["load"],  # 1
            ["click", "next"],  # 2
            ["key", "ArrowRight"],  # 3
            ["key", "ArrowLeft"],  # 4
            ["slide", 11],  # 5
            ["click", "next"],  # 6
            ["click", "bone"],  # 7
            ["key", "ArrowLeft"],  # 8
            ["load"],  # 9
            ["swipe", -3 * 24],  # 10
            ["key", "Home"],  # 11
            ["swipe", 3 * 24],  # 12
            ["click", "zoom-in"],  # 13
            ["click", "zoom-reset"],  # 14
            ["pinch", 2],  # 15
            ["series", 1],  # 16
        ],
    )
    start = steps[0]
    assert start["src"] == url(0) and start["index"] == "0" and start["counter"] == "1 / 12"
    assert start["prev"] and not start["next"] and start["active"] == ["soft"]
    assert start["prefetched"] == []
    # Once the current image is in, the next five are fetched ahead, in order.
    assert steps[1]["prefetched"] == [url(k) for k in range(1, 6)]
    assert (steps[2]["src"], steps[2]["index"], steps[2]["counter"]) == (url(1), "1", "2 / 12")
    assert not steps[2]["prev"]
    assert steps[3]["index"] == "2" and steps[4]["index"] == "1"
    assert (steps[5]["src"], steps[5]["slider"], steps[5]["next"]) == (url(11), "11", True)
    assert steps[6]["index"] == "11"  # no step past the last image
    assert steps[7]["src"] == url(11, "400,1800")
    assert (steps[7]["preset"], steps[7]["active"]) == ("bone", ["bone"])
    assert steps[8]["src"] == url(10, "400,1800")
    # Travelling backwards, the images before are the ones fetched ahead.
    assert steps[9]["prefetched"][-5:] == [url(k, "400,1800") for k in range(9, 4, -1)]
    # A finger moving right goes back, moving left goes forward: one image per 24 px.
    assert steps[10]["index"] == "7"
    assert steps[11]["index"] == "0" and steps[12]["index"] == "3"
    assert "scale(1.5)" in steps[13]["transform"]
    assert steps[14]["transform"] == ""
    assert "scale(2)" in steps[15]["transform"]
    last = steps[16]
    assert (last["src"], last["index"], last["counter"]) == (
        "/r?f=0&window=-600,1500",
        "0",
        "1 / 3",
    )
    assert (last["preset"], last["active"], last["transform"]) == ("lung", ["lung"], "")
    # Nothing is fetched ahead twice.
    assert len(last["prefetched"]) == len(set(last["prefetched"]))
