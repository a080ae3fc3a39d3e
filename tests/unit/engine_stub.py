"""A stand-in engine process for supervisor tests: serves /health on a port or, like vLLM's
--uds, on a Unix socket path, and has a child of its own (like vLLM's engine-core process)
whose pid it writes next to the given pid file."""

import http.server
import socketserver
import subprocess
import sys
from pathlib import Path

address, pid_file = sys.argv[1], Path(sys.argv[2])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
pid_file.write_text(str(child.pid))


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if address.isdigit():
    http.server.HTTPServer(("127.0.0.1", int(address)), Health).serve_forever()
else:
    socketserver.UnixStreamServer(address, Health).serve_forever()
