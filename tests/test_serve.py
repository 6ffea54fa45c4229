"""python -m tinyconv.serve: the HTTP API over loopback, bad requests, concurrency, interrupts,
and the page in a real headless browser (Debian's chromium through selenium)."""

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tinyconv import load_mnist, serve, train
from tinyconv.digits import mnist_digit
from tinyconv.evaluation import load_classifier
from tinyconv.predict import classify
from tinyconv.visualize import shown_layers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    assert train.main(["--recipe", "plain",
                       "--epochs", "2", "--limit-train", "6000", "--limit-test", "500",
                       "--quiet", "--run-dir", str(run)]) == 0
    return run / "best.npz"


@pytest.fixture(scope="module")
def classifier(checkpoint):
    model, config = load_classifier(checkpoint)
    return serve.Classifier(model, config, checkpoint)


@pytest.fixture(scope="module")
def url(classifier):
    server = serve.make_server(classifier, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_one():
    """A 1 as a pen draws it: a dark stroke on white paper."""
    image = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(image).line([(95, 30), (105, 170)], fill=0, width=16)
    return png(image)


def request(url, method="GET", body=None, headers=None):
    """(status, JSON document) of one request; a 4xx/5xx is returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_request(url, head):
    """The status line and body of a request sent as bytes (headers urllib will not send)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_good_digits_are_classified_as_predict_classifies_them(url, classifier, tmp_path):
    images, labels = load_mnist("test")
    paths = []
    for index in range(8):  # MNIST digits as a user's files: enlarged, dark on light
        path = tmp_path / f"{index}.png"
        Image.fromarray(255 - images[index]).resize((112, 112)).save(path)
        paths.append(path)
    (tmp_path / "one.png").write_bytes(drawn_one())
    paths.append(tmp_path / "one.png")
    expected = classify(classifier.model, classifier.config, paths)
    for path, record in zip(paths, expected, strict=True):
        status, answer = request(f"{url}/predict", "POST", path.read_bytes())
        assert status == 200 and answer == {"top": record["top"]}, path.name
    assert expected[-1]["top"][0]["class"] == 1
    guessed = [record["top"][0]["class"] for record in expected[:8]]
    assert sum(np.array(guessed) == labels[:8]) >= 7


def test_maps_show_the_input_and_each_layer(url, classifier):
    status, answer = request(f"{url}/predict?maps=1", "POST", drawn_one())
    assert status == 200
    seen = Image.open(io.BytesIO(base64.b64decode(answer["input"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(seen.convert("L")), mnist_digit(drawn_one()))
    rows = shown_layers(classifier.model)
    assert [layer["name"].split()[0] for layer in answer["layers"]] == \
        [f"{classifier.model.prefix}{index}" for index, _ in rows]
    assert all(layer["image"].startswith("data:image/png;base64,") for layer in answer["layers"])


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/predict", b"not an image", 400, "the image: unreadable image"),
    ("POST", "/predict", b"", 400, "the body is empty"),
    ("POST", "/predict", png(Image.new("L", (50, 50), 255)), 400, "the image: no digit found"),
    ("POST", "/elsewhere", b"x", 404, "no route POST /elsewhere"),
    ("GET", "/nothing", None, 404, "no page /nothing"),
    ("PUT", "/predict", b"x", 405, "method PUT is not allowed"),
    ("DELETE", "/", None, 405, "method DELETE is not allowed"),
])
def test_bad_requests_get_a_4xx_and_one_json_line(url, checkpoint, method, path, body, status,
                                                  message):
    got, answer = request(f"{url}{path}", method, body)
    assert got == status and answer["error"].startswith(message) and "\n" not in answer["error"]
    assert request(f"{url}/healthz") == (200, {"status": "ok", "checkpoint": str(checkpoint),
                                               "classes": 10})


def test_oversized_and_unsized_bodies_are_refused_unread(url):
    line, answer = raw_request(url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                    + str(serve.MAX_BODY + 1).encode() + b"\r\n\r\n")
    assert line.endswith("413 Request Entity Too Large") and "over the limit" in answer["error"]
    line, answer = raw_request(url, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line.endswith("411 Length Required") and "Content-Length" in answer["error"]
    # a length of Unicode digits ('2' superscript, which str.isdigit takes) is no length
    line, answer = raw_request(url, "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                    "\u00b2\r\n\r\n".encode("latin-1"))
    assert line.endswith("411 Length Required")
    # the standard library's own refusals are JSON lines too
    line, answer = raw_request(url, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line.endswith("501 Not Implemented") and answer["error"]
    assert request(f"{url}/healthz")[0] == 200  # still serving


def test_requests_are_served_while_a_prediction_waits(url, classifier):
    # the network is busy (its lock held): a prediction waits, the server answers others
    with classifier.lock:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(request, f"{url}/predict", "POST", drawn_one())
            assert request(f"{url}/healthz")[0] == 200
            assert not waiting.done()
            classifier.lock.release()  # let it through, then take the lock back for `with`
            status, answer = waiting.result(timeout=30)
            classifier.lock.acquire()
    assert status == 200 and answer["top"][0]["class"] == 1


def test_fifty_concurrent_requests_are_all_answered(url):
    body = drawn_one()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: request(f"{url}/predict", "POST", body), range(50)))
    assert all(status == 200 for status, _ in answers)
    assert all(answer == answers[0][1] for _, answer in answers)


def test_the_command_binds_to_loopback_says_so_and_stops_in_one_line(checkpoint):
    process = subprocess.Popen([sys.executable, "-m", "tinyconv.serve", str(checkpoint),
                                "--port", "0", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        assert first.startswith(f"serving {checkpoint} on http://127.0.0.1:")
        assert "reachable from this machine only" in first
        address = first.split(" on ", 1)[1].split(" ", 1)[0]
        assert request(f"{address}healthz")[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert process.stderr.read() == (f"stopped: interrupted by SIGINT; the server on "
                                         f"{address} is closed\n")
    finally:
        process.kill()
        process.stderr.close()


def test_a_port_in_use_is_one_line(checkpoint, url, capsys):
    port = url.rsplit(":", 1)[1]
    assert serve.main([str(checkpoint), "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}:") and err.count("\n") == 1


# ---- the page, in a real browser


def browser():
    """A headless Debian chromium under selenium's ChromeDriver, or a skip (a failure in CI,
    whose .ci/run installs both)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("the browser test must run in CI: .ci/run installs Debian's chromium "
                        "and chromium-driver")
        pytest.skip("needs Debian's chromium and chromium-driver (apt install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


SHOWN = """
const top = document.getElementById("top");
if (top.getAttribute("aria-busy") !== "false") return null;
return [...top.querySelectorAll("li")].map((item) => (
    {class: Number(item.dataset.class), probability: Number(item.dataset.probability)}));
"""


def page_guesses(driver):
    """The page's top classes, once no prediction is on its way."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(lambda _: driver.execute_script(SHOWN) or False)


def canvas_png(driver):
    url = driver.execute_script("return document.getElementById('canvas').toDataURL()")
    return base64.b64decode(url.split(",", 1)[1])


def test_the_page_draws_a_digit_and_shows_what_the_network_makes_of_it(url, classifier):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get(f"{url}/")
        canvas = driver.find_element(By.ID, "canvas")
        # a 1: one stroke down the middle, through the page's own pointer handlers
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, -5, -100)
        stroke.click_and_hold()
        for _ in range(10):
            stroke.move_by_offset(1, 20)
        stroke.release().perform()
        guesses = page_guesses(driver)
        assert guesses[0]["class"] == 1
        # what the page shows is what the API says of the canvas the page drew
        assert guesses == pytest.approx(classifier.predict(canvas_png(driver))["top"])
        assert driver.find_element(By.ID, "input").get_attribute("src").startswith(
            "data:image/png;base64,")
        figures = driver.find_elements(By.CSS_SELECTOR, "#layers figure")
        assert len(figures) == len(shown_layers(classifier.model))
        # clear, then a 7: a bar and a diagonal in one stroke
        driver.find_element(By.ID, "clear").click()
        assert not driver.find_elements(By.CSS_SELECTOR, "#top li")
        seven = ActionChains(driver).move_to_element_with_offset(canvas, -70, -90)
        seven.click_and_hold()
        for step in [(14, 0)] * 10 + [(-8, 18)] * 10:
            seven.move_by_offset(*step)
        seven.release().perform()
        guesses = page_guesses(driver)
        assert guesses == pytest.approx(classifier.predict(canvas_png(driver))["top"])
        assert driver.find_element(By.ID, "status").text == ""
    finally:
        driver.quit()
