"""`fab notebook` on the deployed netns cluster, in a real browser: Debian's headless Chromium,
driven by selenium through chromium-driver, opens the tunnelled URL with its token, runs a cell
that counts a Spark DataFrame on the cluster's workers, and the test reads the result from the
page. Then ending `fab notebook` and `fab ui` the ways a person does (Ctrl-C and a closed
terminal reach the whole foreground process group; `kill` reaches fab) leaves nothing running
on the master or here (`fab tensorboard`: tests/ops/test_tensorboard.py)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from e2e.fab_cli import NO_PROXY, end_as_a_person, serving

pytestmark = pytest.mark.netns

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CELL = ("import socket\n"
        "df = spark.range(1000)\n"
        "print('count:', df.count(), 'on', sorted(set(df.rdd.mapPartitions(\n"
        "    lambda _: [socket.gethostname()]).collect())))")
SCREENSHOT_ENV = "KINDLING_NOTEBOOK_SCREENSHOT"
"""Where the test saves the page once the cell has run (default: the test's folder)."""


def tunnels_to(port: str) -> list[str]:
    """This machine's ssh processes forwarding 127.0.0.1:port."""
    return [b" ".join(argv).decode() for argv in command_lines() if argv[0].endswith(b"ssh")
            and f"127.0.0.1:{port}:".encode() in b" ".join(argv)]


def notebook_processes(cluster) -> list[str]:
    """The master's notebook server, kernels and their Spark drivers."""
    return [line for line in cluster.exec("master", "ps -eo args").stdout.splitlines()
            if any(name in line for name in ("jupyterlab", "ipykernel", "pyspark-shell"))]


def secrets_seen(cluster, token: str) -> dict:
    """Where the token shows while the notebook runs: command lines here and on the master (none
    may), the mode and owner of the server's config file and of its folder on the master."""
    from ops.notebook import CONFIG

    lines = [*cluster.exec("master", "ps -eo args").stdout.splitlines(), *(
        b" ".join(argv).decode(errors="replace") for argv in command_lines())]
    config, folder = cluster.exec("master", f"stat -c '%a %U' {CONFIG} "
                                            f"{CONFIG.rsplit('/', 1)[0]}").stdout.splitlines()
    return {"command lines with the token": [line for line in lines if token in line],
            "config": config, "its folder": folder}


def command_lines() -> list[list[bytes]]:
    """This machine's processes' argv."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            found.append((proc / "cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue
    return found


def run_in_chromium(url: str, screenshot: Path) -> str:
    """Open url (JupyterLab with its token) in headless Chromium, put CELL in a new notebook,
    run it (Shift+Enter), and return its output as the page shows it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--no-proxy-server", "--window-size=1280,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        base, token = url.split("lab?token=")
        notebook = {"type": "notebook", "content": {
            "nbformat": 4, "nbformat_minor": 5, "cells": [
                {"cell_type": "code", "id": "count", "source": CELL, "metadata": {},
                 "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "kindling", "language": "python",
                                        "display_name": "PySpark on the cluster (kindling)"}}}}
        NO_PROXY.open(urllib.request.Request(
            f"{base}api/contents/count.ipynb", data=json.dumps(notebook).encode(), method="PUT",
            headers={"Authorization": f"token {token}"}), timeout=30).close()
        # the token logs the browser in; reset: no layout of an earlier session
        browser.get(f"{base}lab/tree/count.ipynb?reset&token={token}")
        WebDriverWait(browser, 180).until(shown.presence_of_element_located(  # `spark` is made
            (By.XPATH, "//*[contains(@class, 'jp-StatusBar')]//*[contains(text(), '| Idle')]")))
        editor = WebDriverWait(browser, 60).until(shown.element_to_be_clickable(
            (By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .cm-content")))
        editor.click()
        run = ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER)
        run.key_up(Keys.SHIFT).perform()

        def outputs(_) -> str:  # the cell's outputs (Spark's own lines may come before)
            text = "\n".join(o.text for o in browser.find_elements(
                By.CSS_SELECTOR, ".jp-Cell .jp-OutputArea-output"))
            return text if "count:" in text or "Error" in text else ""
        return WebDriverWait(browser, 240).until(outputs)
    finally:
        browser.save_screenshot(str(screenshot))  # the page as the cell left it, or as it failed
        browser.quit()


def test_a_notebook_on_the_master_counts_a_dataframe_on_the_workers_in_a_real_browser(
        netns_cluster, env, wheelhouse, deployed, tmp_path):
    """`fab notebook` installs JupyterLab on the master (the rest is deployed) and prints its URL;
    Chromium runs the cell on the workers; closing the terminal ends it: no server, kernel or
    Spark driver on the master, no tunnel here. (`kill` and Ctrl-C end the same way: fab ui's
    and fab tensorboard's tests.)"""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/system-packages.sh "
                    "installs them as root)")
    started = time.monotonic()
    fab, url = serving(env, "notebook", "--seconds", "600", "--target",
                       str(netns_cluster.inventory_path), "--wheelhouse", wheelhouse)
    served = time.monotonic()
    try:
        screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "notebook.png")
        text = run_in_chromium(url, screenshot)
        secret = secrets_seen(netns_cluster, url.split("token=")[1])
    finally:
        ran = time.monotonic()
        end_as_a_person(fab, "hangup")
    print(f"fab notebook: served in {served - started:.1f}s (JupyterLab installed on the "
          f"master), the cell ran in Chromium {ran - served:.1f}s later, ended in "
          f"{time.monotonic() - ran:.1f}s; the cell's output: {text!r}; screenshot: {screenshot}")
    workers = {host.hostname for host in netns_cluster.inventory.workers}
    found = re.search(r"^count: 1000 on \[(.*)\]$", text, re.M)
    assert found, text
    ran_on = set(re.findall(r"'([^']+)'", found.group(1)))
    assert ran_on and ran_on <= workers, (ran_on, workers)
    user = netns_cluster.inventory.sshUser
    assert secret == {"command lines with the token": [], "config": f"600 {user}",
                      "its folder": f"700 {user}"}
    port = re.search(r":(\d+)/", url).group(1)
    assert (fab.returncode, notebook_processes(netns_cluster), tunnels_to(port)) == (0, [], [])


@pytest.mark.parametrize("how", ["ctrl-c", "hangup", "kill"])
def test_ending_fab_ui_any_way_leaves_no_tunnel(netns_cluster, env, deployed, how):
    fab, url = serving(env, "ui", "--target", str(netns_cluster.inventory_path))
    end_as_a_person(fab, how)
    assert tunnels_to(re.search(r":(\d+)/", url).group(1)) == []
