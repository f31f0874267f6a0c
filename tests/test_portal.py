"""The resident portal (cloud film): share links made through the API and the CLI, the pages
they open in a phone's browser, and every way a link is refused."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pydicom
import pytest
from yarl import URL

from tests.browser import artifacts_dir
from tests.city import City, Client, bearer, huren_command, open_gateway

CT_FACILITY = "F012"


@dataclass
class Portal:
    client: Client
    city: City
    nid: str
    ct_study: str
    other_study: str  # another of the resident's studies


def _resident(city: City) -> tuple[str, str, str]:
    """A resident with a CT at CT_FACILITY and another study elsewhere."""
    for person in city.patients():
        studies = [s for s in city.studies() if s["national_id"] == person["national_id"]]
        ct = [s for s in studies if s["modality"] == "CT" and s["facility_id"] == CT_FACILITY]
        others = [s for s in studies if s not in ct]
        if ct and others:
            return (
                str(person["national_id"]),
                ct[0]["study_instance_uid"],
                others[0]["study_instance_uid"],
            )
    raise AssertionError("the seed has no resident with a CT and another study")


@pytest.fixture
async def p(city: City) -> AsyncIterator[Portal]:
    """The gateway on the city, and a resident with a CT (a service token by default)."""
    nid, ct, other = _resident(city)
    async with open_gateway(city) as (client, _):
        yield Portal(client, city, nid, ct, other)


async def _share(p: Portal, **body: Any) -> dict[str, Any]:
    resp = await p.client.post("/portal/shares", json={"patient": p.nid, **body})
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


def _path(made: dict[str, Any]) -> str:
    return URL(made["url"]).path


async def _unlock(p: Portal, path: str, answer: str) -> Any:
    return await p.client.post(f"{path}/unlock", data={"answer": answer}, allow_redirects=False)


async def test_share_list_needs_the_second_factor_then_shows_the_records(p: Portal) -> None:
    made = await _share(p, second_factor="id4")
    path = _path(made)
    assert made["scope"] == "all" and "pin" not in made
    first = await p.client.get(path)
    page = await first.text()
    assert first.status == 200 and 'name="answer"' in page
    assert p.nid not in page and p.ct_study not in page
    assert "default-src" in first.headers["Content-Security-Policy"]

    wrong = await _unlock(p, path, "0000" if not p.nid.endswith("0000") else "1111")
    assert wrong.status == 401 and "answer" in await wrong.text()
    right = await _unlock(p, path, p.nid[-4:])
    assert right.status == 303
    listed = await p.client.get(path)
    html = await listed.text()
    assert listed.status == 200
    assert html.count('class="study') >= 2
    assert p.nid not in html  # the page names the resident by a masked name only


async def test_study_link_shows_that_study_and_nothing_else(p: Portal) -> None:
    made = await _share(p, study=p.ct_study, second_factor="none")
    path = _path(made)
    assert made["scope"] == "study" and made["facility"] == CT_FACILITY
    html = await (await p.client.get(path)).text()
    assert p.ct_study in html and p.other_study not in html
    assert 'id="labs"' in html and "tr class" not in html.split('id="labs"')[1][:4000]
    own = await p.client.get(f"{path}/studies/{CT_FACILITY}/{p.ct_study}")
    assert own.status == 200
    other_holder = next(
        s["facility_id"] for s in p.city.studies() if s["study_instance_uid"] == p.other_study
    )
    for url in (
        f"{path}/studies/{other_holder}/{p.other_study}",
        f"{path}/facilities/{other_holder}/studies/{p.other_study}/archive.zip",
    ):
        resp = await p.client.get(url)
        assert resp.status == 403, (url, resp.status)
        assert p.nid not in await resp.text()
    series = await (
        await p.client.get(f"/facilities/{other_holder}/dicomweb/studies/{p.other_study}/series")
    ).json()
    instances = await (
        await p.client.get(
            f"/facilities/{other_holder}/dicomweb/studies/{p.other_study}/series/"
            f"{series[0]['0020000E']['Value'][0]}/instances"
        )
    ).json()
    image = (
        f"{path}/facilities/{other_holder}/studies/{p.other_study}/series/"
        f"{series[0]['0020000E']['Value'][0]}/instances/{instances[0]['00080018']['Value'][0]}"
        "/rendered"
    )
    assert (await p.client.get(image)).status == 403
    assert (await p.client.get(f"{path}/access-log")).status == 403


async def test_the_study_downloads_as_a_zip_of_dicom_files(p: Portal) -> None:
    made = await _share(p, study=p.ct_study, second_factor="none")
    resp = await p.client.get(
        f"{_path(made)}/facilities/{CT_FACILITY}/studies/{p.ct_study}/archive.zip"
    )
    assert resp.status == 200 and resp.content_type == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    names = archive.namelist()
    expected = next(s for s in p.city.studies() if s["study_instance_uid"] == p.ct_study)
    assert len(names) == int(expected["instances"])
    for name in names[:3]:
        ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
        assert ds.StudyInstanceUID == p.ct_study


@pytest.mark.parametrize("how", ["forged", "truncated", "revoked", "expired"])
async def test_refused_links_show_a_clear_page_without_patient_data(p: Portal, how: str) -> None:
    made = await _share(p, second_factor="none")
    path = _path(made)
    token = path.rsplit("/", 1)[1]
    if how == "forged":
        path = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    elif how == "truncated":
        path = path.split(".")[0]
    elif how == "revoked":
        resp = await p.client.delete(f"/portal/shares/{made['id']}")
        assert resp.status == 200
    else:
        from gateway.web import CORE

        core = p.client.app[CORE]
        share = await core.shares.get(made["id"])
        assert share is not None and token
        later = datetime.now(UTC) + timedelta(days=31)
        with pytest.raises(Exception) as refused:
            await core.shares.open(token, now=later)
        assert getattr(refused.value, "reason", None) == "expired"
        _, short, _ = await core.shares.create(
            share.person_key, "all", created_by="test", created_role="admin", days=1e-5
        )
        await asyncio.sleep(1.2)
        path = f"/portal/s/{short}"
    resp = await p.client.get(path)
    html = await resp.text()
    assert resp.status == {"forged": 404, "truncated": 404, "revoked": 410, "expired": 410}[how]
    assert resp.content_type == "text/html"
    assert p.nid not in html and p.ct_study not in html and "<img" not in html
    image = await p.client.get(f"{path}/facilities/{CT_FACILITY}/studies/{p.ct_study}/archive.zip")
    assert image.status == resp.status


async def test_wrong_second_factors_lock_the_link(p: Portal) -> None:
    made = await _share(p, second_factor="pin")
    path, pin = _path(made), made["pin"]
    assert len(pin) == 6 and pin.isdigit()
    wrong = "000000" if pin != "000000" else "111111"
    statuses = [(await _unlock(p, path, wrong)).status for _ in range(5)]
    assert statuses[:4] == [401] * 4 and statuses[4] in (401, 423)
    locked = await _unlock(p, path, pin)
    assert locked.status == 423
    html = await (await p.client.get(path)).text()
    assert p.nid not in html


async def test_views_are_audited_as_the_residents_and_the_log_shows_who_looked(
    p: Portal,
) -> None:
    made = await _share(p, second_factor="none")
    path = _path(made)
    doctor = bearer(p.city.data_dir, "clinician", facility=CT_FACILITY, subject="dr-wang")
    resp = await p.client.get(
        f"/facilities/{CT_FACILITY}/dicomweb/studies", params={"PatientID": p.nid}, headers=doctor
    )
    assert resp.status == 200
    assert (await p.client.get(path)).status == 200
    log = await p.client.get(f"{path}/access-log")
    html = await log.text()
    assert log.status == 200 and "dr-wang" not in html
    assert "医生" in html  # the clinician shown by role and facility only
    from gateway.web import CORE

    records = await p.client.app[CORE].audit.search(user=f"share:{made['id']}")
    assert records and all(r.role == "resident" for r in records)
    assert all(made["url"].split("/")[-1] not in r.path for r in records)  # no credential


async def test_qr_codes_and_who_may_make_links(p: Portal) -> None:
    made = await _share(p)
    for suffix, magic in (("qr.png", b"\x89PNG"), ("qr.svg", b"<?xml")):
        resp = await p.client.get(f"{_path(made)}/{suffix}")
        assert resp.status == 200 and (await resp.read()).startswith(magic)
    stranger = bearer(p.city.data_dir, "clinician", facility="F050", subject="dr-far")
    regulator = bearer(p.city.data_dir, "regulator", subject="wjw")
    for headers, body, status in (
        (stranger, {"patient": p.nid, "study": p.ct_study}, 403),
        (stranger, {"patient": p.nid}, 403),
        (regulator, {"patient": p.nid}, 403),
        (None, {"patient": p.nid, "colour": "red"}, 400),
        (None, {"patient": p.nid, "days": 400}, 400),
        (None, {"patient": p.nid, "second_factor": "face"}, 400),
        (None, {"patient": "000000000000000000"}, 404),
    ):
        resp = await p.client.post("/portal/shares", json=body, headers=headers)
        assert resp.status == status, (body, await resp.text())


def test_huren_share_prints_a_link_and_its_pin(p: Portal) -> None:
    """The CLI (DESIGN.md contract): a link and the PIN printed apart from it."""
    out = subprocess.run(
        huren_command(
            p.city.data_dir,
            "share",
            "--patient",
            p.nid,
            "--study",
            p.ct_study,
            "--facility",
            CT_FACILITY,
            "--second-factor",
            "pin",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "/portal/s/" in out.stdout and "PIN" in out.stdout
    bad = subprocess.run(
        huren_command(p.city.data_dir, "share", "--patient", "000000000000000000"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


# -- in a phone's browser ---------------------------------------------------------------------


async def test_a_phone_opens_the_link_steps_through_a_ct_and_sees_the_labs(
    p: Portal, phone: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    made = await _share(p, second_factor="id4")
    base = str(p.client.make_url(_path(made)))
    shots = artifacts_dir("portal")

    def browse() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        wait = WebDriverWait(phone, 30)
        phone.get(base)
        phone.save_screenshot(str(shots / "1-second-factor.png"))
        phone.find_element(By.NAME, "answer").send_keys(p.nid[-4:])
        phone.find_element(By.CSS_SELECTOR, "form button, form [type=submit]").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#studies .study")))
        seen["studies"] = len(phone.find_elements(By.CSS_SELECTOR, "#studies .study"))
        seen["abnormal"] = len(phone.find_elements(By.CSS_SELECTOR, "#labs tr.abnormal"))
        seen["hr"] = len(phone.find_elements(By.CSS_SELECTOR, ".hr-mark"))
        seen["viewport"] = phone.execute_script("return window.innerWidth")
        phone.save_screenshot(str(shots / "2-records.png"))
        labs = phone.find_elements(By.CSS_SELECTOR, "#labs tr.abnormal")
        if labs:
            phone.execute_script("arguments[0].scrollIntoView()", labs[0])
            phone.save_screenshot(str(shots / "3-lab-abnormal.png"))
        link = next(
            a
            for a in phone.find_elements(By.CSS_SELECTOR, ".study a.view")
            if p.ct_study in (a.get_attribute("href") or "")
        )
        phone.get(link.get_attribute("href"))
        image = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#viewer img#image")))
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        wait.until(lambda _: phone.execute_script(loaded, image))
        seen["first"] = (image.get_attribute("src"), image.get_attribute("data-index"))
        seen["counter"] = phone.find_element(By.ID, "counter").text
        phone.find_element(By.ID, "next").click()
        wait.until(lambda _: image.get_attribute("data-index") == "1")
        wait.until(lambda _: phone.execute_script(loaded, image))
        seen["second"] = image.get_attribute("src")
        phone.find_element(By.CSS_SELECTOR, "button.preset[data-preset=bone]").click()
        wait.until(lambda _: image.get_attribute("data-preset") == "bone")
        wait.until(lambda _: phone.execute_script(loaded, image))
        seen["bone"] = image.get_attribute("src")
        phone.save_screenshot(str(shots / "4-ct-bone.png"))
        phone.find_element(By.ID, "zoom-in").click()
        seen["zoomed"] = image.get_attribute("style")
        phone.save_screenshot(str(shots / "5-ct-zoomed.png"))
        return seen

    seen = await asyncio.to_thread(browse)
    assert seen["viewport"] == 390
    assert seen["studies"] >= 2 and seen["abnormal"] >= 1
    assert seen["first"][1] == "0" and "/rendered" in seen["first"][0]
    assert seen["counter"].startswith("1 /")
    assert seen["second"] != seen["first"][0]
    assert "window=400,1800" in seen["bone"]
    assert "scale" in (seen["zoomed"] or "")
    for name in ("2-records.png", "4-ct-bone.png"):
        assert (shots / name).stat().st_size > 10_000
    json.dumps(seen)  # what the browser saw, plain data


async def test_a_visit_link_shows_that_days_records_at_that_facility(p: Portal) -> None:
    """A visit: what one facility holds of one day (the study of that day), nothing else."""
    study = next(s for s in p.city.studies() if s["study_instance_uid"] == p.ct_study)
    day = study["study_datetime"][:10]
    made = await _share(p, facility=CT_FACILITY, visit_date=day)
    assert made["scope"] == "visit"
    html = await (await p.client.get(_path(made))).text()
    assert p.ct_study in html and p.other_study not in html
    others = [
        s for s in p.city.studies() if s["national_id"] == p.nid and s["study_datetime"][:10] != day
    ]
    for other in others:
        resp = await p.client.get(
            f"{_path(made)}/studies/{other['facility_id']}/{other['study_instance_uid']}"
        )
        assert resp.status == 403
    english = await (await p.client.get(_path(made), params={"lang": "en"})).text()
    assert 'lang="en"' in english and "Imaging" in english
