"""The server's page (proslushka/web/index.html) in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver (the two come at the same version, and nothing is downloaded). The microphone is
chromium's fake device playing a clip (chromium loops it); the file input gets a clip as a person would pick it."""

import json
import os
import shutil
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import ROOT
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_serve import tr, url  # noqa: F401 (fixtures: the demo model with its LM, served at a free port)

from proslushka.audio import load_audio
from proslushka.formats import to_srt
from proslushka.metrics import cer

CLIP = ROOT / "samples" / "portret.opus"
SAID = "на угле портрета висел венок из запыленных иммортелей"  # samples/manifest.jsonl
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = "/tmp/proslushka-web.png"  # the page after the live transcript came, for a person to look at

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not (CHROMIUM and DRIVER),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver; CI installs them)",
)


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> str:
    """The clip as the fake microphone plays it: 48 kHz 16-bit WAV, a second of silence before it and two after, so
    that the speech ends in a pause (a final) before chromium starts the file again."""
    pause = np.zeros(16000, np.float32)
    audio = soxr.resample(np.concatenate([pause, load_audio(CLIP), pause, pause]), 16000, 48000, "HQ")
    path = tmp_path_factory.mktemp("mic") / "clip.wav"
    sf.write(path, audio, 48000, subtype="PCM_16")
    return str(path)


@pytest.fixture
def browser(mic_wav):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={mic_wav}"]:  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def wait_for(check, seconds: float = 30, what: str = ""):
    """check()'s first truthy value, polled; an AssertionError naming `what` when none comes in time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds} s")


def streams(at: str) -> int:
    with urllib.request.urlopen(f"http://{at}/health", timeout=10) as r:
        return json.loads(r.read())["streams"]


def errors(driver) -> list[str]:
    """What the page logged as errors (uncaught exceptions, failed requests)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_recording_shows_partials_then_the_clip_s_transcript_and_stops(browser, url):  # noqa: F811
    browser.get(f"http://{url}/")
    # every partial the page shows, as it shows it (polling could miss one)
    browser.execute_script("""window.partials = [];
        new MutationObserver(() => window.partials.push(document.getElementById("partial").textContent))
            .observe(document.getElementById("partial"), {childList: true, characterData: true, subtree: true});""")
    mic = browser.find_element(By.ID, "mic")
    mic.click()
    finals = wait_for(lambda: browser.find_element(By.ID, "finals").text, what="final")
    assert cer([SAID], [finals.splitlines()[0]]) < 0.05, finals
    partials = browser.execute_script("return window.partials")
    assert any(p and SAID.startswith(p.split()[0]) for p in partials), partials  # words showed before their final
    assert "идёт запись" in browser.find_element(By.ID, "micstatus").text
    browser.save_screenshot(SCREENSHOT)
    assert streams(url) == 1
    mic.click()  # stop: eof, the last result, the server's close
    wait_for(lambda: streams(url) == 0, 10, "close of the stream")
    assert mic.text == "Начать запись" and browser.find_element(By.ID, "micstatus").text == ""
    assert errors(browser) == []


def test_a_second_click_while_the_microphone_starts_opens_no_second_stream(browser, url):  # noqa: F811
    browser.get(f"http://{url}/")
    browser.execute_script("const b = document.getElementById('mic'); b.click(); b.click();")
    wait_for(lambda: "идёт запись" in browser.find_element(By.ID, "micstatus").text, 10, "recording")
    time.sleep(1)  # a second stream, had one been started, is open by now
    assert streams(url) == 1
    browser.find_element(By.ID, "mic").click()
    wait_for(lambda: streams(url) == 0, 10, "close of the stream")


def test_a_picked_file_gets_its_text_words_and_an_srt_download(browser, url, tr, tmp_path):  # noqa: F811
    browser.get(f"http://{url}/")
    browser.find_element(By.ID, "file").send_keys(str(CLIP))
    link = browser.find_element(By.ID, "srt")
    wait_for(link.is_displayed, what="SRT link")
    assert browser.find_element(By.ID, "text").text == SAID
    words = [w.text.split() for w in browser.find_elements(By.CSS_SELECTOR, "#words span")]
    want = tr.transcribe_path(CLIP)
    assert words == [[w.word, f"{w.start:.2f}–{w.end:.2f}"] for w in want.words]
    assert link.get_attribute("download") == "portret.srt"
    srt = browser.execute_async_script(
        "fetch(arguments[0]).then((r) => r.text()).then(arguments[1])", link.get_attribute("href")
    )
    assert srt == to_srt(want)
    # a file that is not audio: the server's one line, in red, and no stale link
    (tmp_path / "notes.wav").write_text("not audio")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.wav"))
    text = browser.find_element(By.ID, "text")
    wait_for(lambda: "not readable audio" in text.text, what="error")
    assert text.text.startswith("notes.wav: not readable audio") and text.get_attribute("class") == "error"
    assert not link.is_displayed()
    # no answer at all (the server gone): said so, not "распознаю…" for ever
    browser.execute_script("window.fetch = () => Promise.reject(new TypeError('Failed to fetch'))")
    browser.find_element(By.ID, "file").send_keys(str(CLIP))
    wait_for(lambda: text.text == "сервер не ответил: Failed to fetch", 10, "network error")
    assert [e for e in errors(browser) if "/v1/audio/transcriptions" not in e] == []  # the 400 is logged, as it is
