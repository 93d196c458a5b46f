"""A browser's WebRTC call, end to end: headless Chromium runs OpenAI's browser sample flow against the simulator,
or against the gateway relaying to the simulator, and the outcome prints as one JSON line on stdout.

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python tests/browser_call.py --target gateway'

Run it in a network namespace whose only interface is loopback: Chromium pairs ICE candidates from whatever
interfaces it sees, and the servers here answer on 127.0.0.1 only. (`--allow-loopback-in-peer-connection` makes
Chromium offer loopback at all.)

The page (served here on 127.0.0.1) does what the sample does: its own backend mints a client secret from the
target with the API key (`GET /token`), then `getUserMedia` (Chromium's fake device: a beep), an
`RTCPeerConnection` without ICE servers, the mic track, the `oai-events` data channel, and the offer POSTed raw to
`<target>/v1/realtime/calls` with the secret. Over the channel it waits for `session.created`, asks for a response
to a text message and waits until that response is done and its audio has played, sampling `getStats()` and the
remote audio throughout. It POSTs what it saw to `/result`; this script adds the gateway's turn records and
Chromium's version, prints the JSON and exits 0, or 1 with the reason on stderr (the JSON still prints when the
page got that far).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bifrost_rt.config import parse_config
from bifrost_rt.records import TurnRecord
from bifrost_rt.runtime.app import create_app
from bifrost_rt.runtime.server import uvicorn_settings
from bifrost_rt.tools.simulator import SimulatorOptions, create_simulator_app

from conftest import VIRTUAL_KEY, CapturingSink, gateway_config
from servers import ServerThread

SIMULATOR_KEY = "sk-browser-test"
CLIENT_SECRETS_SECRET = "browser-call-client-secret-sealing-key-0123456789"
RESPONSE_AUDIO_MS = 1500
# The fake microphone beeps over and over, and server VAD takes each beep for speech. It keeps listening (its events
# show the microphone's audio arrived) but neither answers a beep nor lets one cut the answer the page asks for.
SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False,
                                           "interrupt_response": False}}},
}
RECORDS_TIMEOUT_S = 15.0  # after the page has reported, on top of the call's own limit
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # runs as root in CI
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",  # grants the microphone without a prompt
    "--autoplay-policy=no-user-gesture-required",  # the remote audio plays in an <audio> element and Web Audio
    "--disable-audio-output",
    "--disable-gpu",
    "--no-first-run",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>browser call</title></head>
<body>
<script>
const TARGET = __TARGET__;
const STEP_TIMEOUT_MS = __STEP_TIMEOUT_MS__;

const result = {ok: false, step: "start", error: null, errors: [], events: [], response: null, stats: null,
                energyBefore: null, maxAudioLevel: 0, toneHz: [], location: null};
let step = "start";

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms waiting for ${what}`)),
                       STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function audioStats(pc) {
  const stats = {inbound: null, outbound: null, pair: null};
  const byId = new Map();
  (await pc.getStats()).forEach((report) => byId.set(report.id, report));
  for (const report of byId.values()) {
    if (report.type === "inbound-rtp" && report.kind === "audio") {
      stats.inbound = {packetsReceived: report.packetsReceived, packetsLost: report.packetsLost,
                       totalAudioEnergy: report.totalAudioEnergy, audioLevel: report.audioLevel,
                       totalSamplesReceived: report.totalSamplesReceived,
                       totalSamplesDuration: report.totalSamplesDuration, codec: byId.get(report.codecId)?.mimeType};
    } else if (report.type === "outbound-rtp" && report.kind === "audio") {
      stats.outbound = {packetsSent: report.packetsSent, bytesSent: report.bytesSent};
    } else if (report.type === "transport" && report.selectedCandidatePairId) {
      const pair = byId.get(report.selectedCandidatePairId);
      const end = (c) => c && `${c.address}:${c.port} ${c.protocol} ${c.candidateType}`;
      stats.pair = {local: end(byId.get(pair.localCandidateId)), remote: end(byId.get(pair.remoteCandidateId))};
    }
  }
  return stats;
}

// The loudest frequency of the remote audio. The <audio> element plays the same stream: Chromium has long handed
// Web Audio a remote track's samples only while a media element plays it.
function toneMeter(stream) {
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  context.createMediaStreamSource(stream).connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  return {
    context,
    peak() {
      analyser.getFloatFrequencyData(bins);
      let best = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      return {hz: best * context.sampleRate / analyser.fftSize, db: bins[best]};
    },
  };
}

async function main() {
  step = "token";
  const tokenReply = await within(fetch("/token"), "/token");
  const token = await tokenReply.json();
  if (!tokenReply.ok) throw new Error(`/token answered ${tokenReply.status}: ${JSON.stringify(token)}`);
  const ephemeralKey = token.value;

  step = "microphone";
  const microphone = await within(navigator.mediaDevices.getUserMedia({audio: true}), "getUserMedia");

  step = "offer";
  const pc = new RTCPeerConnection();
  const speaker = document.createElement("audio");
  speaker.autoplay = true;
  document.body.append(speaker);
  const remoteStream = new Promise((resolve) => {
    pc.ontrack = (e) => {
      speaker.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      resolve(speaker.srcObject);
    };
  });
  pc.addTrack(microphone.getTracks()[0]);
  const dc = pc.createDataChannel("oai-events");
  const received = [];
  const waiters = [];
  dc.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    received.push(event);
    result.events.push(event.type);
    if (event.type === "error") result.errors.push(event.error);
    for (const waiter of waiters.splice(0)) {
      if (waiter.test(event)) waiter.resolve(event); else waiters.push(waiter);
    }
  });
  const waitFor = (test, what) => {
    const seen = received.find(test);
    return seen ? Promise.resolve(seen) : within(new Promise((resolve) => waiters.push({test, resolve})), what);
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);

  step = "call";
  const callReply = await within(fetch(`${TARGET}/v1/realtime/calls`, {
    method: "POST",
    body: offer.sdp,
    headers: {Authorization: `Bearer ${ephemeralKey}`, "Content-Type": "application/sdp"},
  }), "the answer to the offer");
  const answer = await callReply.text();
  if (callReply.status !== 201) throw new Error(`the call was refused: ${callReply.status} ${answer}`);
  result.location = callReply.headers.get("Location");
  await pc.setRemoteDescription({type: "answer", sdp: answer});

  step = "session.created";
  await waitFor((e) => e.type === "session.created", "session.created");
  const meter = toneMeter(await within(remoteStream, "the remote track"));
  // No inbound-rtp stats yet means no packet yet, so no energy either.
  result.energyBefore = (await audioStats(pc)).inbound?.totalAudioEnergy ?? 0;

  step = "response";
  dc.send(JSON.stringify({type: "conversation.item.create", item: {type: "message", role: "user",
                          content: [{type: "input_text", text: "hello from the browser"}]}}));
  dc.send(JSON.stringify({type: "response.create"}));
  const sampling = setInterval(async () => {
    const level = (await audioStats(pc)).inbound?.audioLevel ?? 0;
    result.maxAudioLevel = Math.max(result.maxAudioLevel, level);
    const peak = meter.peak();
    if (peak.db > -50) result.toneHz.push(peak.hz);
  }, 50);
  try {
    const done = await waitFor((e) => e.type === "response.done", "response.done");
    result.response = {id: done.response.id, status: done.response.status, usage: done.response.usage};
    step = "audio";
    await waitFor((e) => e.type === "output_audio_buffer.stopped" && e.response_id === done.response.id,
                  "output_audio_buffer.stopped");
    // The server reports the audio sent; playing it out lags behind, by more on a busy machine. Done once the
    // tone has been heard and has gone quiet again.
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    const played = (inbound) => inbound?.totalAudioEnergy > result.energyBefore && inbound.audioLevel < 0.01;
    let stats = await audioStats(pc);
    while (Date.now() < deadline && !played(stats.inbound)) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      stats = await audioStats(pc);
    }
    result.stats = stats;
  } finally {
    clearInterval(sampling);
  }

  step = "hangup";
  dc.close();
  pc.close();
  microphone.getTracks().forEach((track) => track.stop());
  await meter.context.close();
  result.ok = result.errors.length === 0;
  if (!result.ok) result.error = "the data channel carried error events";
}

main().catch((error) => {
  result.error = `${error}`;
}).finally(() => {
  result.step = step;
  return fetch("/result", {method: "POST", body: JSON.stringify(result),
                           headers: {"Content-Type": "application/json"}});
});
</script>
</body></html>
"""


class Failure(Exception):
    """The call did not happen as it should; the message says why."""


class PageServer:
    """The page, its `/token` backend and the `/result` it reports to."""

    def __init__(self, step_timeout_s: float) -> None:
        self.result: dict[str, Any] | None = None
        self.reported = threading.Event()
        self.target_url = ""
        self.key = ""
        self._step_timeout_ms = int(step_timeout_s * 1000)
        self.server = ServerThread(Starlette(routes=[
            Route("/", self._page),
            Route("/token", self._token),
            Route("/result", self._result, methods=["POST"]),
        ]))

    @property
    def origin(self) -> str:
        return self.server.url

    async def _page(self, request: Request) -> Response:
        html = (PAGE.replace("__TARGET__", orjson.dumps(self.target_url).decode())
                .replace("__STEP_TIMEOUT_MS__", str(self._step_timeout_ms)))
        return HTMLResponse(html)

    async def _token(self, request: Request) -> Response:
        """What the sample's server does: mint a client secret with the API key, hand it to the page."""
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(f"{self.target_url}/v1/realtime/client_secrets",
                                      headers={"Authorization": f"Bearer {self.key}"},
                                      json={"session": SESSION})
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    async def _result(self, request: Request) -> Response:
        self.result = orjson.loads(await request.body())
        self.reported.set()
        return Response(status_code=204)


@contextlib.contextmanager
def serving(*servers: ServerThread) -> Iterator[None]:
    started: list[ServerThread] = []
    try:
        for server in servers:
            started.append(server.start())
        yield
    finally:
        for server in reversed(started):
            server.stop()


@contextlib.contextmanager
def chromium(binary: str, url: str, extra_flags: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Chromium on `url` with a throwaway profile (its directory is the log's parent); killed with everything it
    started on the way out."""
    with tempfile.TemporaryDirectory(prefix="browser-call-") as profile:
        log = Path(profile) / "chromium.log"
        with log.open("wb") as output:
            process = subprocess.Popen([binary, *CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}", url],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            yield process, log
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def log_tail(log: Path, lines: int = 30) -> str:
    # Without a session bus Chromium logs a D-Bus error every few milliseconds; none of them matter here.
    kept = [line for line in log.read_text(errors="replace").splitlines() if "dbus" not in line.lower()]
    return "\n".join(kept[-lines:])


def chromium_version(binary: str) -> str:
    reply = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=30)
    return reply.stdout.strip()


def wait_for_result(page: PageServer, process: subprocess.Popen[bytes], log: Path, deadline: float) -> dict[str, Any]:
    while not page.reported.wait(0.1):
        if process.poll() is not None:
            raise Failure(f"Chromium exited with {process.returncode} before the page reported:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise Failure(f"the page did not report within the time limit; Chromium's log:\n{log_tail(log)}")
    assert page.result is not None
    return page.result


def records_of(sink: CapturingSink, response_id: str) -> list[TurnRecord]:
    """Every record the gateway wrote, once one is for `response_id`."""
    deadline = time.monotonic() + RECORDS_TIMEOUT_S
    count = 1
    while True:
        try:
            records = sink.wait_for(count, timeout=max(0.1, deadline - time.monotonic()))
        except AssertionError as exc:
            raise Failure(f"no turn record for response {response_id}: {exc}") from None
        if any(record.response_id == response_id for record in records):
            return records
        count = len(records) + 1


def run(target: str, binary: str, timeout_s: float) -> tuple[dict[str, Any], str | None]:
    """(the report, why the call failed or None)."""
    deadline = time.monotonic() + timeout_s
    page = PageServer(step_timeout_s=timeout_s / 3)
    options = SimulatorOptions(pace=0, response_audio_ms=RESPONSE_AUDIO_MS)
    simulator_app = create_simulator_app(options)
    sink = CapturingSink()
    if target == "simulator":
        # api.openai.com answers browsers' CORS preflights; the simulator stands in for it here.
        simulator = ServerThread(CORSMiddleware(simulator_app, allow_origins=[page.origin], allow_methods=["POST"],
                                                allow_headers=["Authorization", "Content-Type"],
                                                expose_headers=["Location"]))
        servers = [simulator]
        page.target_url, page.key = simulator.url, SIMULATOR_KEY
    else:
        simulator = ServerThread(simulator_app)
        config = parse_config(gateway_config(
            f"{simulator.url}/v1",
            client_secrets={"secret": CLIENT_SECRETS_SECRET},
            cors={"allowed_origins": [page.origin]},
            webrtc={"host_candidates": "loopback"},
        ))
        settings = uvicorn_settings(config.realtime)
        gateway = ServerThread(create_app(config, turn_sinks=[sink]), ws_ping_interval=settings["ws_ping_interval"],
                               ws_ping_timeout=settings["ws_ping_timeout"], ws_max_size=settings["ws_max_size"],
                               ws_per_message_deflate=settings["ws_per_message_deflate"])
        servers = [simulator, gateway]
        page.target_url, page.key = gateway.url, VIRTUAL_KEY

    report: dict[str, Any] = {"target": target, "chromium_version": chromium_version(binary)}
    with serving(*servers, page.server), chromium(binary, f"{page.origin}/") as (process, log):
        browser = report["browser"] = wait_for_result(page, process, log, deadline)
        if not browser["ok"]:
            why = f"the page failed at step {browser['step']!r}: {browser['error']}; error events: {browser['errors']}"
            return report, why
        if target == "gateway":
            records = records_of(sink, browser["response"]["id"])
            report["turn_records"] = [record.to_dict() for record in records]
        else:
            report["turn_records"] = []
    return report, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["simulator", "gateway"], default="simulator")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the browser binary (default: on PATH)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the call, until the page reports")
    args = parser.parse_args()
    if not args.chromium:
        print("browser_call: chromium is not installed (not on PATH)", file=sys.stderr)
        return 2
    try:
        report, failure = run(args.target, args.chromium, args.timeout)
    except Failure as exc:
        print(f"browser_call: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    if failure is not None:
        print(f"browser_call: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
