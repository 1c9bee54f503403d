"""The control panel's Keystone sign-in against a REAL Keystone
(scripts/keystone_aio.py, tests/helpers_keystone.py): a Keystone user signs
in through ``POST /panel/api/session`` with username/password/project and
then works with only the HttpOnly cookie (plus the CSRF header for writes),
over HTTP and in headless Chromium.  Keystone's roles arrive mapped
(member -> cloudImages:admin, reader -> cloudImages:observer)."""
from __future__ import annotations

import httpx
import pytest

from helpers_browser import make_driver, screenshot
from helpers_keystone import keystone_server
from test_panel_browser import rendered, wait

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

CSRF = "X-Vhdkit-CSRF"
SESSION = "/panel/api/session"
#: what a session that may change nothing must say it cannot do
WRITES = ("create_image", "update_image", "delete_image", "upload_data", "add_member", "create_task")


@pytest.fixture(scope="module")
def server(keystone, tmp_path_factory):
    srv = keystone_server(keystone, tmp_path_factory.mktemp("panel-keystone"))
    yield srv          # pytest runs the rest at teardown whatever the tests did
    srv.stop()


@pytest.fixture(scope="module")
def member(keystone):
    return keystone.user(["member"])


def _sign_in(server, user, password=None) -> httpx.Response:
    return httpx.post(server.url + SESSION, headers={CSRF: "sign-in"}, timeout=30,
                      json={"username": user.name, "password": password or user.password, "project": user.project})


def _cookie_client(server, user) -> httpx.Client:
    """A client holding only the session cookie the panel's sign-in set."""
    r = _sign_in(server, user)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("vhdkit_session=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower() and "Max-Age=" in cookie
    assert user.password not in r.text
    return httpx.Client(base_url=server.url, cookies=r.cookies, timeout=30)


def test_member_signs_in_and_works_with_only_the_cookie(server, member):
    with _cookie_client(server, member) as c:
        me = c.get(SESSION)
        assert me.status_code == 200, me.text
        me = me.json()
        assert me["account"] == member.project_id
        assert "cloudImages:admin" in me["roles"] and "member" not in me["roles"]
        assert all(me["can"][op] for op in WRITES) and me["csrf"]
        assert c.get("/v2/images").status_code == 200
        refused = c.post("/v2/images", json={"name": "no-csrf"})
        assert refused.status_code == 403 and CSRF in refused.json()["error"]["message"]
        made = c.post("/v2/images", json={"name": "panel-ks"}, headers={CSRF: me["csrf"]})
        assert made.status_code == 201, made.text
        assert made.json()["owner"] == member.project_id
        listed = c.get("/v2/images").json()["images"]
        assert made.json()["id"] in [i["id"] for i in listed]
        assert c.delete(f"/v2/images/{made.json()['id']}", headers={CSRF: me["csrf"]}).status_code == 204


def test_wrong_password_is_401_without_a_cookie(server, member):
    r = _sign_in(server, member, password=member.password + "x")
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert "127.0.0.1" not in r.text


def test_reader_session_offers_no_edit_and_its_writes_are_403(server, keystone):
    reader = keystone.user(["reader"])
    with _cookie_client(server, reader) as c:
        me = c.get(SESSION).json()
        assert me["account"] == reader.project_id and me["roles"] == ["cloudImages:observer"]
        assert not any(me["can"][op] for op in WRITES) and me["can"]["list_images"]
        assert c.get("/v2/images").status_code == 200
        assert c.post("/v2/images", json={"name": "no"}, headers={CSRF: me["csrf"]}).status_code == 403


def test_keystone_sign_in_in_a_real_browser(server, member, tmp_path):
    driver = make_driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait(driver, lambda d: d.find_elements(By.NAME, "username"), "the Keystone sign-in form")
        assert not driver.find_elements(By.CSS_SELECTOR, "main .notice")     # no header-identity warning
        driver.find_element(By.NAME, "username").send_keys(member.name)
        driver.find_element(By.NAME, "password").send_keys(member.password)
        project = driver.find_element(By.NAME, "project")
        project.send_keys(member.project)
        rendered(driver, lambda: project.send_keys(Keys.ENTER))
        wait(driver, lambda d: d.execute_script("return document.body.dataset.page") == "images", "the Images page")
        assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Images")
        driver.find_element(By.CSS_SELECTOR, "#account-menu summary").click()
        number = driver.find_element(By.ID, "account-number")
        assert number.is_displayed() and number.text == member.project_id
        assert "cloudImages:admin" in driver.find_element(By.ID, "account-roles").text
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["vhdkit_session"]["httpOnly"]
        assert driver.execute_script("return document.cookie") == ""          # never readable by script
        screenshot(driver, "keystone-sign-in")
    finally:
        driver.quit()
