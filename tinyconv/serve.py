"""A page to draw digits on, and its HTTP API: python -m tinyconv.serve CHECKPOINT [--help].

  GET  /          the page (tinyconv/serve.html: one file, its script inline, nothing fetched
                  from elsewhere, so it works offline): draw with a mouse, pen or finger, or
                  upload a photo, and see the top classes, the 28x28 digit the network gets
                  and the feature maps of its layers as you draw
  POST /predict   an image's bytes (PNG, JPEG, ...) in the body: the JSON record predict
                  --json prints per image ({"top": [{"class", "probability"}, ...]}); with
                  ?maps=1 also "input" (the 28x28 digit) and "layers" (each shown layer's
                  maps), as PNG data URLs
  GET  /healthz   {"status": "ok", "checkpoint", "classes"}

A bad request (no image, an empty body or one over MAX_BODY bytes, another method or path)
gets a 4xx status and a one-line JSON {"error": ...}, and the server goes on serving. Requests
are served concurrently (a thread each, the standard library's ThreadingHTTPServer: a page
and a small JSON API need no framework); the network runs one request at a time, as its
buffers are its own. Needs Pillow (pip install 'tinyconv[pictures]').
"""

import base64
import io
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from tinyconv import cli, plots
from tinyconv.digits import ImageError, mnist_digit, pillow
from tinyconv.evaluation import model_inputs
from tinyconv.predict import DEFAULTS, top_classes
from tinyconv.visualize import feature_rows

PAGE = Path(__file__).with_name("serve.html")
MAX_BODY = 4 * 1024 * 1024  # bytes: a phone photo fits, a mistake does not
LOOPBACK = "127.0.0.1"


class Classifier:
    """A checkpoint's network and preprocessing, one call at a time."""

    def __init__(self, model, config, checkpoint, top=DEFAULTS["top"], threads=None):
        self.model, self.config, self.checkpoint = model, config, str(checkpoint)
        self.top, self.threads = min(top, model.output_shape[0]), threads
        self.lock = threading.Lock()

    def predict(self, data, maps=False):
        """The record of an image's bytes: its top classes, and with maps the input and
        feature maps as PNG data URLs; ImageError if it holds no readable digit."""
        digit = mnist_digit(data, "the image")
        with self.lock:
            cli.set_threads(self.threads)  # Numba's thread count is each thread's own
            x = model_inputs(digit[None], self.config)
            probabilities = self.model.probabilities(x)[0]
            rows = feature_rows(self.model, x) if maps else []
        record = {"top": top_classes(probabilities, self.top)}
        if maps:
            record["input"] = png_url(np.stack([digit] * 3, axis=-1))
            record["layers"] = [{"name": " ".join(label.split()), "shape": list(values.shape),
                                 "image": png_url(diverging(plots.mosaic(values)))}
                                for label, values in rows]
        return record


def diverging(values):
    """uint8 RGB (H, W, 3) of a 2-D array: red for positive, blue for negative, white for 0
    and NaN (the gaps of a mosaic), scaled by the largest magnitude."""
    scale = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
    t = np.nan_to_num(values / scale if scale > 0 else values * 0.0)
    fade = 255 * (1 - np.abs(t))
    red = np.where(t < 0, fade, 255)
    blue = np.where(t > 0, fade, 255)
    return np.stack([red, fade, blue], axis=-1).round().astype(np.uint8)


def png_url(rgb):
    """A data: URL of a PNG of uint8 RGB (H, W, 3)."""
    buffer = io.BytesIO()
    pillow().fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Handler(BaseHTTPRequestHandler):
    """The three routes; every answer a JSON line (the page aside), every failure a 4xx."""

    classifier = None  # set on the server's own subclass (make_server)
    quiet = False
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the standard library's name)
        route = urlsplit(self.path).path
        if route in ("/", "/index.html"):
            self.answer(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif route == "/healthz":
            self.json(200, {"status": "ok", "checkpoint": self.classifier.checkpoint,
                            "classes": self.classifier.model.output_shape[0]})
        else:
            self.json(404, {"error": f"no page {route}: the routes are GET /, GET /healthz "
                                     "and POST /predict"})

    def do_POST(self):  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path != "/predict":
            self.refuse_body()
            return self.json(404, {"error": f"no route POST {parts.path}: images go to "
                                            "POST /predict"})
        length = self.headers.get("Content-Length")
        if length is None or not is_length(length):
            return self.json(411, {"error": "POST /predict needs a Content-Length header "
                                            "and the image's bytes as the body"}, close=True)
        if int(length) > MAX_BODY:
            return self.json(413, {"error": f"the body is {int(length):,} bytes, over the "
                                            f"limit of {MAX_BODY:,}"}, close=True)
        data = self.rfile.read(int(length))
        if not data:
            return self.json(400, {"error": "the body is empty: send an image's bytes (PNG, "
                                            "JPEG, ...)"})
        maps = parse_qs(parts.query).get("maps", ["0"])[0] not in ("0", "")
        try:
            record = self.classifier.predict(data, maps)
        except ImageError as exc:
            return self.json(400, {"error": str(exc)})
        self.json(200, record)

    def refused(self):
        self.refuse_body()
        self.json(405, {"error": f"method {self.command} is not allowed: the routes are GET /, "
                                 "GET /healthz and POST /predict"}, allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = refused

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (a malformed request line, an unknown method)
        as one JSON line too, not its HTML page."""
        self.json(code, {"error": message or HTTPStatus(code).phrase}, close=True)

    def refuse_body(self):
        """Read a small body away so the connection stays usable; close it after a big one."""
        length = self.headers.get("Content-Length", "0")
        if is_length(length) and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def json(self, status, document, close=False, allow=None):
        self.answer(status, (json.dumps(document) + "\n").encode(), "application/json",
                    close, allow)

    def answer(self, status, body, kind, close=False, allow=None):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of its body, not the body
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the standard library's signature)
        if not self.quiet:
            print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)


class Server(ThreadingHTTPServer):
    """A thread per request; connections queue beyond socketserver's 5 (a class of students
    opening the page at once), and a stop does not wait for open connections."""

    request_queue_size = 128
    daemon_threads = True


def is_length(text):
    """Whether a Content-Length header is a decimal count (str.isdigit takes '²' too)."""
    return text.isascii() and text.isdigit()


def make_server(classifier, host=LOOPBACK, port=8000, quiet=False):
    """A Server answering for classifier on (host, port); port 0 picks a free one."""
    handler = type("ServeHandler", (Handler,), {"classifier": classifier, "quiet": quiet})
    return Server((host, port), handler)


def parser():
    parser = cli.parser(
        "python -m tinyconv.serve",
        "Serve a page where you draw a digit (mouse, pen or finger) or upload a photo and see, "
        "as you draw, the network's top classes, the 28x28 digit it gets and its feature "
        "maps; and the HTTP API behind it (POST /predict with an image's bytes, GET "
        "/healthz). Needs Pillow.",
        examples=["python -m tinyconv.serve runs/NAME/best.npz   # then open "
                  "http://127.0.0.1:8000/",
                  "curl --data-binary @digit.png http://127.0.0.1:8000/predict"])
    cli.add_inference_flags(parser)
    parser.add_argument("--host", default=LOOPBACK,
                        help="the address to listen on (default %(default)s: this machine "
                             "only; 0.0.0.0 serves every network it is on)")
    parser.add_argument("--port", type=cli.count(0), default=8000,
                        help="the port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    return parser


def command(args):
    pillow()  # before loading anything: without Pillow no image can be read
    cli.set_threads(args.threads)
    model, config, _ = cli.classifier_from_flags(args)
    classifier = Classifier(model, config, args.checkpoint, threads=args.threads)
    try:
        server = make_server(classifier, args.host, args.port, args.quiet)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {args.host}:{args.port}: "
                                 f"{cli.os_reason(exc)}") from None
    host, port = server.server_address[:2]
    reach = ("this machine only (--host 0.0.0.0 to serve the network)" if host == LOOPBACK
             else "every address of this machine")
    print(f"serving {args.checkpoint} on http://{host}:{port}/ , reachable from {reach}; "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except cli.Interrupted as exc:
        raise exc.again(f"{exc}; the server on http://{host}:{port}/ is closed") from None
    finally:
        server.server_close()


def main(argv=None):
    return cli.run(parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
