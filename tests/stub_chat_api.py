"""A chat-completions server on loopback for the judge tests: `respond(body: dict, headers) -> (status, dict)` decides
each answer; the server does the HTTP. `verdict_reply(...)` builds the usual OpenAI-shaped answer."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verdict_reply(safety: str, professionalism: str, fluency: str) -> dict:
    verdict = json.dumps({"safety": safety, "professionalism": professionalism, "fluency": fluency},
                         ensure_ascii=False)
    return {"choices": [{"message": {"role": "assistant", "content": verdict}}]}


class StubChatAPI:
    def __init__(self, respond):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, reply = respond(body, self.headers)
                data = json.dumps(reply, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
