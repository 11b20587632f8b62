"""serving.run's drain (unit, on a local HTTP server): a slow or failing /metrics is not a stopped server."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.launch import free_port
from serving.run import drain

IN_FLIGHT = 'bentoml_service_request_in_progress{endpoint="/predict",service_name="x",runner_name="x"} %d\n'


def test_a_slow_metrics_scrape_keeps_the_drain_waiting():
    """Issue 27: /metrics grown by hostile URLs took over the drain's 2 s read timeout; the drain took the timeout for
    a stopped server and stopped waiting, and the in-flight batch got 503."""
    scrapes = []

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            scrapes.append(time.monotonic())
            if len(scrapes) == 1:
                time.sleep(2.5)  # past in_flight()'s 2 s timeout
            body = (IN_FLIGHT % (1 if len(scrapes) < 4 else 0)).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        left = drain(f"http://127.0.0.1:{port}", 0.0, 10.0)
    finally:
        server.shutdown()
    assert left == 0.0 and len(scrapes) >= 4, (left, len(scrapes))


def test_a_refused_connection_ends_the_drain_at_once():
    start = time.monotonic()
    left = drain(f"http://127.0.0.1:{free_port()}", 0.0, 10.0)
    assert left != left and time.monotonic() - start < 2  # NaN: nobody listens, nothing to wait for
