"""A chat-completions server on loopback for the judge tests. `respond(body: dict, request)` decides each answer
(`request.path`, `request.headers`) and
returns (status, reply) or (status, reply, extra response headers); `reply` is a dict sent as JSON, or bytes sent as
they are. The server does the HTTP. `completion(text)` / `verdict_reply(...)` build the usual OpenAI-shaped answer."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def verdict_reply(safety: str, professionalism: str, fluency: str) -> dict:
    return completion(json.dumps({"safety": safety, "professionalism": professionalism, "fluency": fluency},
                                 ensure_ascii=False))


class StubChatAPI:
    def __init__(self, respond, poll_interval: float = 0.02):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output (and any key) out of stderr
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, reply, *extra = respond(body, self)
                data = reply if isinstance(reply, bytes) else json.dumps(reply, ensure_ascii=False).encode()
                try:
                    self.send_response(code)
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout under test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": poll_interval},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
